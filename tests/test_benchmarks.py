"""The benchmark suite runs and writes its table (no timing is checked here)."""

import pathlib
import subprocess
import sys

import pytest

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
