"""The benchmark suite runs and writes its table (no timing is checked here)."""

import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest
import torch

import keras_steps

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("keras_steps", "keras_steps_spe16", "keras_handwritten", "torch")


@pytest.mark.slow
def test_quick_benchmark_writes_its_table(tmp_path):
    output = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--workloads", "mlp",
            "--variants", ",".join(VARIANTS),
            "--memory", "off",
            "--threads", "1",
            "--output", str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = output.read_text()
    assert "| machine | |" in text and "| keras |" in text and "| CPU |" in text
    mlp = text.split("### mlp:")[1].split("###")[0]
    rows = [line.split("|") for line in mlp.splitlines() if line.startswith("| ")][2:]
    assert [row[1].strip() for row in rows] == list(VARIANTS)
    for row in rows:
        assert float(row[2]) > 0, row
    assert "### dispatch (issue 2)" in text
    assert "| StepModel / hand-written train_step |" in text
    # What is printed is what is written.
    assert mlp.strip().splitlines()[-1] in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("view", ["python", "ops"])
def test_step_profile_names_where_the_time_goes(view):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "profile_step.py"),
            "mlp", "--view", view, "--spe", "4", "--steps", "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    if view == "python":
        shares = {k: float(v[0].strip().rstrip("%")) for k, v in rows.items() if k != "part"}
        assert 0 < shares["optimizer.apply"] < 100
        assert 0 < shares["layer and model calls (forward)"] < 100
        assert shares["the step (StepModel.train_step)"] > shares["optimizer.apply"]
    else:
        ours, theirs = (float(x) for x in rows["all aten operators"])
        assert ours > 0 and theirs > 0
        assert "`aten::mm`" in rows or "`aten::addmm`" in rows


def _compile_report():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compile_report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return compile_report


class _LoopedUpdates:
    """Two updates in a loop, each ending in a backward: a graph break in a loop."""

    @keras_steps.hookimpl
    def train_step(self, model, data):
        for _ in range(2):
            loss = _update(model, data)
        return {"loss": loss}

    @keras_steps.hookimpl
    def test_step(self):
        return {}


class _OneUpdate:
    """The same update without the loop: its graph break is no reason to skip the frame."""

    @keras_steps.hookimpl
    def train_step(self, model, data):
        return {"loss": _update(model, data)}

    @keras_steps.hookimpl
    def test_step(self):
        return {}


def _update(model, data):
    x, y = data
    loss = keras.ops.mean((model(x, training=True) - y) ** 2)
    keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
    return loss


def _dense(step):
    inputs = keras.Input(shape=(4,))
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs), step=step)
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    return model


@pytest.mark.slow
def test_compile_report_names_the_frames_torch_compile_runs_eagerly():
    report = _compile_report()
    keras_steps.register_step(_LoopedUpdates(), name="looped")
    keras_steps.register_step(_OneUpdate(), name="one_update")
    batches = [(torch.rand(8, 4), torch.rand(8, 1)) for _ in range(3)]
    looped = report.compiled_epoch(_dense("looped"), batches)
    assert looped["graphs"] > 0
    skipped = [s for s in looped["skipped"] if "test_benchmarks.py:" in s]
    assert [s.split(" (")[0] for s in skipped] == ["train_step"], looped
    single = report.compiled_epoch(_dense("one_update"), batches)
    assert single["graphs"] > 0
    assert not [s for s in single["skipped"] if "test_benchmarks.py:" in s], single


@pytest.mark.slow
def test_compile_report_of_a_workload_locates_each_graph_break():
    report = _compile_report()
    import workloads

    result = report.report(workloads.WORKLOADS["mlp"], "cpu")
    assert result["explain"]["graphs"] == result["explain"]["breaks"] + 1
    # Keras's train_step calls backward(), which dynamo does not trace: the
    # break is located in Keras's file, not in torch's.
    assert any(
        r.startswith("Unsupported Tensor.backward() call (keras/src/backend/torch/trainer.py:")
        for r in result["explain"]["reasons"]
    ), result
    text = "\n".join(report.lines(result))
    assert "run eagerly, a graph break in a loop: none" in text


@pytest.mark.slow
def test_compile_report_names_the_functions_past_the_recompile_limit():
    report = _compile_report()

    def model():
        inputs = keras.Input(shape=(4,))
        hidden = keras.layers.Dense(3, activation="relu")(inputs)
        model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(hidden))
        model.compile(optimizer="sgd", loss="mse", jit_compile=True)
        return model

    batches = [(torch.rand(8, 4), torch.rand(8, 1)) for _ in range(3)]
    assert report.compiled_epoch(model(), batches)["limited"] == []
    # A limit of 1 leaves no room for the recompilations the default of 8 absorbs.
    with torch._dynamo.config.patch(recompile_limit=1):
        limited = report.compiled_epoch(model(), batches)["limited"]
    assert limited, limited
    for function in limited:  # "name (keras/src/...py:line)": whose code, where
        assert re.fullmatch(r"\w+ \(keras/src/\S+\.py:\d+\)", function), limited


def test_run_keeps_the_sections_other_scripts_wrote(tmp_path, monkeypatch):
    # run.py reads its options and sets KERAS_TORCH_DEVICE on import: undone after the test.
    monkeypatch.setattr(sys, "argv", ["run.py"])
    monkeypatch.setenv("KERAS_TORCH_DEVICE", os.environ.get("KERAS_TORCH_DEVICE", "cpu"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    output = tmp_path / "RESULTS.md"
    run.write_results(output, {"CPU": "x"}, ["### mlp: old"])
    tail = f"{run.OTHER_SCRIPTS}\n\n## Gradient synchronisation\n\n| a | b |\n"
    output.write_text(output.read_text() + "\n" + tail)
    run.write_results(output, {"CPU": "y"}, ["### mlp: new"])
    text = output.read_text()
    assert "### mlp: new" in text and "### mlp: old" not in text and "| CPU | y |" in text
    assert text.endswith(tail) and text.count(run.OTHER_SCRIPTS) == 1


@pytest.mark.slow
def test_ddp_benchmark_compares_the_three_ways_on_two_ranks(tmp_path):
    output = tmp_path / "ddp.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ddp.py"), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = output.read_text()
    for row in ("keras 1 process", "keras after backward", "keras overlapped", "torch DDP"):
        assert f"| {row}" in text
    # The overlapped contender really overlapped, and trained exactly like the default.
    started = re.search(
        r"started during backward (\d+), at apply (\d+), all-reduced again (\d+)", text
    )
    assert started and int(started[1]) > 0 and started[3] == "0", text
    assert "at most 0.0e+00 apart" in text
