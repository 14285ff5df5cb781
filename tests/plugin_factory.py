"""Builds small plugin distributions on disk, as an installed package would look."""

from __future__ import annotations

import pathlib
import re
import sys
import textwrap

GOOD_STEP = '''
"""A step that trains the single network with plain mean squared error."""
import keras
import keras_steps
from pydantic import Field


class Options(keras_steps.StepOptions):
    scale: float = Field(1.0, gt=0, description="Multiplier of the loss.")


@keras_steps.hookimpl
def step_options():
    return Options


@keras_steps.hookimpl
def step_build(model):
    return {"loss": keras.metrics.Mean(name="loss")}


@keras_steps.hookimpl
def train_step(model, data, options):
    x, y = data
    loss = options.scale * keras.ops.mean(keras.ops.square(model(x, training=True) - y))
    keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
    model.step_state["loss"].update_state(loss)
    return {"loss": model.step_state["loss"].result()}


@keras_steps.hookimpl
def test_step(model, data, options):
    x, y = data
    loss = options.scale * keras.ops.mean(keras.ops.square(model(x) - y))
    model.step_state["loss"].update_state(loss)
    return {"loss": model.step_state["loss"].result()}
'''


def readme_step() -> str:
    """The README's "Writing a step" example as the module a package would publish.

    Everything from its ``register_step(...)`` line on (registering and using
    the step in a script or notebook) is left out: an installed package
    declares the class as an entry point instead.
    """
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Writing a step", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "class ScaledMSE" in code and "def step_options(self)" in code
    lines = code.splitlines()
    register = [i for i, line in enumerate(lines) if line.startswith("keras_steps.register_step(")]
    assert register and lines[register[0]].startswith("keras_steps.register_step(ScaledMSE()")
    return "\n".join(lines[: register[0]]) + "\n"


def write_distribution(
    root: pathlib.Path,
    dist: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "1.0",
) -> pathlib.Path:
    """Write importable ``modules`` and a dist-info declaring ``entry_points``.

    Returns the folder to put on ``sys.path``.
    """
    site = root / "site"
    site.mkdir(parents=True, exist_ok=True)
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[keras_steps]\n{lines}")
    return site


def forget_modules(names) -> None:
    for name in names:
        sys.modules.pop(name, None)
