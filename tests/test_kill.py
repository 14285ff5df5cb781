"""SIGKILL at many points of a save or a backup, then load what is on disk.

``tests/kill_worker.py`` measures how long one write takes, then kills a
forked writer at 24 times spread from 0 to twice that; each kill is
followed by a load (or a resumed fit). The ``--keras`` runs are the
controls: the same kills against Keras's own writers break the file, which
shows the kills land inside the write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("kill_worker.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the worker forks its writers"),
]


def _kill(tmp_path: Path, mode: str, *flags: str) -> dict:
    out = tmp_path / f"{mode}.json"
    done = subprocess.run(
        [sys.executable, str(WORKER), mode, str(out), *flags],
        env={**os.environ, "KERAS_BACKEND": "torch"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["kills"]) >= 20
    return result


def test_sigkill_during_model_save_leaves_the_old_file_or_the_new_one(tmp_path):
    result = _kill(tmp_path, "save")
    outcomes = [k["outcome"] for k in result["kills"]]
    assert set(outcomes) <= {"old", "new"}, outcomes
    # A kill at the start finds the old file; the last write, not killed, the new one.
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes
    # A kill leaves at most its own temporary file behind, next to the target.
    assert max(k["temp_files"] for k in result["kills"]) <= 1


def test_control_sigkill_during_keras_save_breaks_the_file(tmp_path):
    result = _kill(tmp_path, "save", "--keras")
    broken = [k for k in result["kills"] if k["outcome"].startswith("broken")]
    assert len(broken) >= 5, result["kills"]
    # keras_steps.load_model says the file is damaged, not "File not found".
    assert all("DamagedFileError" in k["outcome"] for k in broken), broken


def test_sigkill_during_a_backup_resumes_as_if_never_killed(tmp_path):
    # Default arguments: a backup at each epoch's end; the kills land in the
    # one that replaces the first backup.
    result = _kill(tmp_path, "backup")
    kills = result["kills"]
    assert [k["outcome"] for k in kills] == ["same as uninterrupted"] * len(kills), kills
    # Killed during fit, not after it ended (late kill times may outlast the run).
    assert sum(k["killed"] for k in kills) >= 20, kills
    # The first kills left the previous backup (epoch 1); on a busy machine the
    # later ones may all land before the new record is written, so only the
    # control below shows that kills land inside a write.
    assert json.loads(kills[0]["record"])["epoch"] == 1, kills


def test_control_sigkill_during_keras_s_own_backup_breaks_it(tmp_path):
    # Keras alone: a plain keras.Model and keras.callbacks.BackupAndRestore.
    result = _kill(tmp_path, "backup", "--keras", "--plain")
    broken = [k for k in result["kills"] if k["outcome"].startswith("broken")]
    assert len(broken) >= 3, result["kills"]
    # Mostly h5py's "Unable to synchronously open file"; a kill inside the
    # metadata write leaves a JSON file cut short instead.
    assert any("Unable to synchronously open file" in k["outcome"] for k in broken), broken
