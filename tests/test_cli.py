"""The keras-steps command: list, show, demo (in-process, through main())."""

import json

import keras
import pytest
from pydantic import Field

import keras_steps
from keras_steps._cli import main


class Options(keras_steps.StepOptions):
    rho: float = Field(0.05, gt=0, description="Neighbourhood radius.")
    mode: str = Field("a", description="Which variant.")


class Shown:
    """A step shown by the CLI."""

    @keras_steps.hookimpl
    def step_options(self):
        return Options

    @keras_steps.hookimpl
    def train_step(self, model, data):
        return keras.Model.train_step(model, data)

    @keras_steps.hookimpl
    def test_step(self, model, data):
        return keras.Model.test_step(model, data)


def test_list_text_and_json(capsys):
    keras_steps.register_step(Shown(), name="shown")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "supervised" in out and "core" in out
    assert "shown" in out and "local" in out and "A step shown by the CLI." in out
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {s["name"]: s for s in data["steps"]}
    assert by_name["supervised"]["source"]["kind"] == "core"
    assert by_name["shown"]["summary"] == "A step shown by the CLI."


def test_show_text_and_json(capsys):
    keras_steps.register_step(Shown(), name="shown")
    assert main(["show", "shown"]) == 0
    out = capsys.readouterr().out
    assert "rho: number = 0.05" in out and "Neighbourhood radius." in out
    assert "exclusiveMinimum=0" in out
    assert "model roles:     model" in out
    assert main(["show", "shown", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["options"][0] == {
        "name": "rho",
        "type": "number",
        "default": 0.05,
        "description": "Neighbourhood radius.",
        "constraints": {"exclusiveMinimum": 0.0},
    }
    assert data["options_schema"]["additionalProperties"] is False
    assert data["optimizer_roles"] == ["model"]


def test_unknown_step_is_a_clean_error(capsys):
    assert main(["show", "supervize"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-steps: No step named 'supervize'. Did you mean 'supervised'?")


def test_demo_of_a_step_without_one(capsys):
    keras_steps.register_step(Shown(), name="shown")
    assert main(["demo", "shown"]) == 2
    assert "has no demo" in capsys.readouterr().err


def test_supervised_demo_prints_history(capsys, tmp_path):
    args = ["demo", "supervised", "--epochs", "2", "--steps", "3", "--output", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out
    losses = next(line for line in out.splitlines() if line.startswith("loss: "))
    first, last = (float(v) for v in losses.split()[1:])
    assert last < first


def test_demo_rejects_non_positive_budget():
    with pytest.raises(SystemExit):
        main(["demo", "supervised", "--epochs", "0"])
