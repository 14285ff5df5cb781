"""What keras-steps decides per Keras version where Keras's torch trainer does the same job.

Keras 3.16 (keras-nightly) wraps the model in DDP, all-reduces metric
variables, runs ``steps_per_execution`` and compiles the step itself; before
3.16 it does none of these. keras-steps does each itself on every version
and switches Keras's off (docs/distributed.md has the table). These tests
run in one process with a one-rank gloo group, which is enough for Keras
3.16 to take its distributed paths; tests/test_distributed.py proves the
values on two ranks.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
import torch.distributed as dist

import keras_steps
from keras_steps import _distributed, _keras_private


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-rank process group, as torchrun with one process (or a user) makes."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model(**compile_kwargs):
    inputs = keras.Input((3,))
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
    model.compile(keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"], **compile_kwargs)
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def test_the_version_gate_matches_the_installed_trainer():
    # Keras's torch Trainer has the DDP hook from 3.16 on (StepModel's own
    # no-op comes from _keras_private.TrainerHooks, not from this class).
    wraps = hasattr(_keras_private.BackendTrainer, "_initialize_ddp")
    assert _keras_private.trainer_wraps_ddp() == wraps
    assert _keras_private.trainer_wraps_ddp() == (_keras_private.KERAS_VERSION >= (3, 16))


def test_keras_never_wraps_the_model_in_ddp(one_rank_group):
    assert _distributed.is_active()
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    # Keras's own make_*_function (which on 3.16 call _initialize_ddp) too.
    keras.Model.make_train_function(model, force=True)
    keras.Model.make_test_function(model, force=True)
    assert getattr(model, "ddp_model", None) is None
    ddp = torch.nn.parallel.DistributedDataParallel
    assert not any(isinstance(m, ddp) for m in [model, *model.models.values()])


def test_keras_never_reduces_metrics_across_ranks(one_rank_group, monkeypatch):
    model = _model()
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)

    def no_collective(*args, **kwargs):
        raise AssertionError("get_metrics_result() made a collective call")

    monkeypatch.setattr(dist, "all_reduce", no_collective)
    # Called by every train and test step: local results only, on every
    # version (Keras 3.16 would all-reduce every metric variable here).
    results = model.get_metrics_result()
    assert set(results) == {"loss", "mae"}


def test_epoch_logs_are_reduced_once_per_epoch_not_per_step(one_rank_group, monkeypatch):
    model = _model()
    x, y = _data()
    calls = []
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", counting)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    # 4 steps, each one flat all-reduce of the gradients (kernel, bias and a
    # presence flag per variable: 3 + 1 + 2 numbers); the metric state
    # (loss and mae: total and count each) once for the epoch.
    gradient_calls = [n for n in calls if n == 3 + 1 + 2]
    metric_calls = [n for n in calls if n == 4]
    assert len(gradient_calls) == 4
    assert len(metric_calls) == 1


def test_a_keras_distribution_on_top_of_torchrun_is_refused(one_rank_group, monkeypatch):
    model = _model()
    x, y = _data()

    class DataParallel:  # stands for keras.distribution.DataParallel(...)
        pass

    monkeypatch.setattr(keras.distribution, "distribution", lambda: DataParallel())
    with pytest.raises(keras_steps.DistributedError, match="sharded twice") as caught:
        model.fit(x, y, batch_size=4, verbose=0)
    assert "rank 0 of 1: fit() found a Keras distribution (DataParallel" in str(caught.value)
    with pytest.raises(keras_steps.DistributedError, match="evaluate\\(\\) found"):
        model.evaluate(x, y, verbose=0)


def test_fused_and_compiled_steps_use_keras_steps_functions(monkeypatch):
    """Keras 3.16 accepts steps_per_execution > 1 and compiles the step
    method itself; StepModel's own functions run on every version, with one
    torch.compile per step kind (static shapes), never Keras's as well."""
    compiled = []
    original = torch.compile

    def recording(fn, *args, **kwargs):
        compiled.append((getattr(fn, "__name__", fn), kwargs.get("dynamic")))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", recording)
    model = _model(steps_per_execution=2, jit_compile=True)
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert compiled == [("train_step", False)]
    eager = _model(steps_per_execution=2, jit_compile=False)
    eager.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert compiled == [("train_step", False)]


# -- what CI runs on the other Keras versions ------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def _script_pin(name):
    text = (ROOT / "scripts" / "test-keras-versions.sh").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"{name}=")]
    return line.split("=", 1)[1].strip('"')


def test_the_subset_names_tests_that_exist():
    entries = [
        ln.strip()
        for ln in (ROOT / "tests" / "keras_versions_subset.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert "tests/test_distributed.py" in entries and "tests/test_saving.py" in entries
    for entry in entries:
        path, _, test = entry.partition("::")
        assert (ROOT / path).is_file(), entry
        if test:
            assert f"def {test}(" in (ROOT / path).read_text(), entry


def test_the_lowest_keras_tested_is_the_floor_pyproject_admits():
    pyproject = (ROOT / "pyproject.toml").read_text()
    (floor,) = re.findall(r'"keras>=([\d.]+),<[\d.]+"', pyproject)
    lowest = _script_pin("LOWEST")
    assert lowest == f"keras=={floor}.0"
    assert _script_pin("NIGHTLY").startswith("keras-nightly==")
    readme = (ROOT / "README.md").read_text()
    assert f"{floor}.0\n(lowest)" in readme or f"{floor}.0 (lowest)" in readme


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in ("bash scripts/test.sh", "bash scripts/test-keras-versions.sh"):
        assert command in ci and command in readme, command
