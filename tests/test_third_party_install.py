"""A real third-party distribution: built with its own pyproject.toml, installed, used.

Slow (pip builds a wheel), so it runs the checks that need a real install in
one go: list_steps(), the CLI, StepModel(step=...), and the two environment
variables, each in a fresh interpreter as a user would see them.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from plugin_factory import GOOD_STEP

pytestmark = pytest.mark.slow

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "ks-thirdparty"
version = "0.7.1"

[project.entry-points.keras_steps]
thirdparty = "ks_thirdparty"
broken = "ks_thirdparty_broken"
trainonly = "ks_trainonly"

[tool.setuptools]
packages = ["ks_thirdparty", "ks_thirdparty_broken", "ks_trainonly"]
"""

# The Keras idiom: override train_step only; evaluate() is Keras's own step.
# It also declares its arguments, as a third-party step would.
TRAIN_ONLY = """
\"\"\"Compiled loss on inputs with Gaussian noise; evaluation on clean inputs.\"\"\"
import keras
import keras_steps
from pydantic import Field


class Options(keras_steps.StepOptions):
    stddev: float = Field(0.1, ge=0, description="Noise added to the inputs.")


@keras_steps.hookimpl
def step_options():
    return Options


@keras_steps.hookimpl
def step_arguments():
    return {
        "y": "required",
        "loss": "required",
        "class_weight": keras_steps.Refused("it weighs examples with sample_weight only"),
    }


@keras_steps.hookimpl
def train_step(model, data, options):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    x = x + keras.random.normal(keras.ops.shape(x), stddev=options.stddev)
    y_pred = model(x, training=True)
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
    keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
    for metric in model.metrics:
        if metric.name == "loss":
            metric.update_state(loss)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
"""


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "ks_thirdparty").mkdir()
    (src / "ks_thirdparty" / "__init__.py").write_text(GOOD_STEP)
    (src / "ks_thirdparty_broken").mkdir()
    (src / "ks_thirdparty_broken" / "__init__.py").write_text("import not_a_module_here\n")
    (src / "ks_trainonly").mkdir()
    (src / "ks_trainonly" / "__init__.py").write_text(TRAIN_ONLY)
    dest = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(dest), str(src)],
        check=True,
    )
    return dest


def run(target, code, **env):
    environ = {**os.environ, "PYTHONPATH": str(target), "KERAS_BACKEND": "torch", **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=environ, timeout=120,
    )


def test_installed_plugin_is_listed_shown_and_trains(target):
    result = run(target, """
        import json, warnings
        import numpy as np, keras, keras_steps
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            steps = {s.name: str(s.source) for s in keras_steps.list_steps()}
        inputs = keras.Input((3,))
        model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs), step="thirdparty")
        model.compile(optimizer="sgd")
        x = np.random.rand(64, 3).astype("float32")
        h = model.fit(x, x.sum(1, keepdims=True), epochs=3, verbose=0).history
        messages = [str(m.message) for m in w]
        print(json.dumps({"steps": steps, "loss": h["loss"], "warnings": messages}))
    """)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["steps"]["thirdparty"] == "ks-thirdparty 0.7.1"
    assert data["loss"][-1] < data["loss"][0]
    assert "broken" not in data["steps"]
    assert any(
        "'broken'" in m and "ks-thirdparty 0.7.1" in m and "not_a_module_here" in m
        for m in data["warnings"]
    )


def test_cli_lists_and_shows_installed_plugin(target):
    result = run(target, "from keras_steps._cli import main; main(['list', '--json'])")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    entry = next(s for s in data["steps"] if s["name"] == "thirdparty")
    assert entry["source"]["distribution"] == "ks-thirdparty"
    assert entry["source"]["version"] == "0.7.1"
    assert "broken" in data["problems"]
    result = run(target, "from keras_steps._cli import main; main(['show', 'thirdparty'])")
    assert "scale: number = 1.0" in result.stdout


def test_environment_variables_in_a_fresh_interpreter(target):
    code = "import keras_steps; print(sorted(s.name for s in keras_steps.list_steps()))"
    disabled = run(target, code, KERAS_STEPS_DISABLE_PLUGIN_AUTOLOAD="1")
    assert disabled.stdout.strip() == "['supervised']"
    assert disabled.stderr == ""
    only = run(target, code, KERAS_STEPS_LOAD_PLUGINS="thirdparty, missing")
    assert "'thirdparty'" in only.stdout and "'broken'" not in only.stdout
    assert "'missing'" in only.stderr and "not_a_module_here" not in only.stderr


def test_plugin_of_only_options_and_train_step_trains_and_evaluates(target):
    result = run(target, """
        import json
        import numpy as np, keras, keras_steps
        inputs = keras.Input((3,))
        model = keras_steps.StepModel(
            inputs, keras.layers.Dense(1)(inputs), step="trainonly",
            step_options={"stddev": 0.01},
        )
        model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        x = np.random.default_rng(0).random((64, 3)).astype("float32")
        y = x.sum(1, keepdims=True)
        h = model.fit(x, y, epochs=3, verbose=0).history
        ours = model.evaluate(x, y, verbose=0, return_dict=True)
        # Keras's own test_step on the same network, weights and data.
        plain = keras.Model(model.inputs, model.outputs)
        plain.compile(loss="mse", metrics=["mae"])
        theirs = plain.evaluate(x, y, verbose=0, return_dict=True)
        try:
            model.fit(x, y, class_weight={0: 1.0}, verbose=0)
            refused = None
        except keras_steps.ArgumentError as error:
            refused = str(error)
        print(json.dumps({"loss": h["loss"], "ours": ours, "theirs": theirs,
                          "refused": refused}))
    """)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["loss"][-1] < data["loss"][0]
    assert data["ours"].keys() == {"loss", "mae"}
    assert data["ours"] == pytest.approx(data["theirs"], rel=1e-6)
    assert "Step 'trainonly' (ks-thirdparty 0.7.1) does not take class_weight" in data["refused"]
    assert "sample_weight only" in data["refused"]
