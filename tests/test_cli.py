"""The keras-steps command: list, show, demo (in-process, through main()), its speed."""

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from pydantic import Field

import keras_steps
from keras_steps import _extras
from keras_steps._cli import build_parser, main

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


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


# -- fast answers, help, missing extras --------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["demo", "--help"]])
def test_help_and_version_import_neither_torch_nor_keras(argv):
    code = (
        "import sys\n"
        "from keras_steps._cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = [m for m in ('torch', 'keras', 'numpy', 'pydantic', 'pluggy')\n"
        "         if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "HEAVY []"
    assert "keras-steps" in result.stdout


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    version = importlib.metadata.version("keras-steps")
    assert capsys.readouterr().out == f"keras-steps {version}\n"
    assert keras_steps.__version__ == version


def test_every_subcommand_and_argument_has_help():
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert set(helps) == set(subparsers.choices) == {"list", "show", "check", "demo"}
    for name, sub in subparsers.choices.items():
        assert helps[name], name
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)


class NeedsExtra:
    """A step whose demo imports a module that one of the extras provides."""

    def __init__(self, module):
        self.module = module

    @keras_steps.hookimpl
    def train_step(self, model, data):
        return keras.Model.train_step(model, data)

    @keras_steps.hookimpl
    def test_step(self, model, data):
        return keras.Model.test_step(model, data)

    @keras_steps.hookimpl
    def step_demo(self, out_dir, epochs, steps):
        importlib.import_module(self.module)


def _extras_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


@pytest.mark.parametrize("module", sorted(_extras.MODULE_EXTRAS))
def test_a_missing_extra_is_one_line(module, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # import of it fails
    keras_steps.register_step(NeedsExtra(module), name="needs-extra")
    assert main(["demo", "needs-extra", "--output", str(tmp_path)]) == 1
    package, extra = _extras.MODULE_EXTRAS[module]
    err = capsys.readouterr().err
    assert err == (
        f"keras-steps demo: needs {package}, which is not installed: "
        f"pip install 'keras-steps[{extra}]'\n"
    )


def test_the_vae_demo_without_scikit_learn_is_one_line(monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert main(["demo", "vae", "--output", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "keras-steps demo: needs scikit-learn, which is not installed: "
        "pip install 'keras-steps[demo]'\n"
    )


def test_an_unrelated_import_error_is_not_hidden(monkeypatch, tmp_path):
    keras_steps.register_step(NeedsExtra("no_such_module_xyz"), name="needs-extra")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):
        main(["demo", "needs-extra", "--output", str(tmp_path)])


def test_every_extras_package_has_an_install_hint():
    known = {package: extra for package, extra in _extras.MODULE_EXTRAS.values()}
    for extra, requirements in _extras_in_pyproject().items():
        for requirement in requirements:
            package = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
            if package == "keras-steps":
                continue
            assert package in known, f"{package} of extra {extra!r} has no entry in MODULE_EXTRAS"
            # A package in two extras is hinted with the one a user installs for it.
            assert known[package] in _extras_in_pyproject(), package


def test_the_lazy_names_are_also_imported_for_type_checkers():
    import ast

    tree = ast.parse(Path(keras_steps.__file__).read_text())
    (block,) = [
        node for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    ]
    typed = {
        (alias.asname or alias.name): (node.module if node.module != "keras_steps"
                                       else f"keras_steps.{alias.name}")
        for node in block.body
        for alias in node.names
    }
    assert typed == keras_steps._LAZY
    assert set(keras_steps._LAZY) <= set(keras_steps.__all__)
    for name in keras_steps.__all__:
        assert getattr(keras_steps, name) is not None


@pytest.mark.slow
@pytest.mark.parametrize(("local_rank", "imports_torch"), [(None, False), ("0", True)])
def test_importing_keras_steps_waits_for_torch_except_under_torchrun(local_rank, imports_torch):
    env = {k: v for k, v in os.environ.items()
           if k not in ("KERAS_BACKEND", "LOCAL_RANK")}
    if local_rank is not None:
        env["LOCAL_RANK"] = local_rank  # torchrun's: the GPU must be picked at import
    code = "import os, sys, keras_steps; print('torch' in sys.modules, os.environ['KERAS_BACKEND'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(imports_torch), "torch"]
