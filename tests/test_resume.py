"""BackupAndRestore resumes an interrupted fit() exactly, even in mid-epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from resume_worker import NEEDS_GAN, Stop, StopAt, build, fit, weights

WORKER = Path(__file__).with_name("resume_worker.py")
EPOCHS = 3
# 8 batches per epoch; with save_freq=3 the last backup before the
# interruption at (epoch 1, batch 5) is the one after (epoch 1, batch 3).
SAVE_FREQ = 3
STOP_AT = (1, 5)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["supervised", "duel"])
def test_resume_in_mid_epoch_matches_an_uninterrupted_run(tmp_path, kind):
    backup_dir = tmp_path / "backup"
    with pytest.raises(Stop):
        fit(
            build(kind),
            kind,
            EPOCHS,
            [
                keras.callbacks.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ),
                StopAt(*STOP_AT),
            ],
        )
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert metadata == {"epoch": 1, "batch": 3}

    resumed = build(kind)  # a fresh model, as in a new process
    history = fit(
        resumed,
        kind,
        EPOCHS,
        [keras.callbacks.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ)],
    )
    reference = build(kind)
    reference_history = fit(reference, kind, EPOCHS)

    _assert_same(weights(resumed), weights(reference))
    assert len(history.epoch) == 2  # epochs 1 and 2 only
    if kind == "duel":
        # The step's trackers were restored too: the resumed epoch's logs are
        # those of the run that never stopped.
        for name in ("d_loss", "g_loss"):
            np.testing.assert_allclose(
                history.history[name], reference_history.history[name][1:], rtol=1e-6
            )


@pytest.mark.parametrize("kind", ["supervised", "duel"])
@pytest.mark.parametrize("resumed_spe", [4, 3, 1])
def test_resume_in_mid_epoch_with_fused_steps(tmp_path, kind, resumed_spe):
    # Groups of 4: the backups are taken at the ends of executions, after
    # batches 3 and 7 of each epoch. The interruption comes after batch 7 of
    # epoch 1, before its backup, so the run resumes after batch 3, in
    # groups of 4, 3 (the second group is half passed over) or 1.
    backup_dir = tmp_path / "backup"

    def backup():
        return keras.callbacks.BackupAndRestore(backup_dir, save_freq=4)

    with pytest.raises(Stop):
        fit(build(kind, steps_per_execution=4), kind, EPOCHS, [StopAt(1, 7), backup()])
    metadata = json.loads((backup_dir / "training_metadata.json").read_text())
    assert metadata == {"epoch": 1, "batch": 3}

    resumed = build(kind, steps_per_execution=resumed_spe)
    history = fit(resumed, kind, EPOCHS, [backup()])
    reference = build(kind)
    reference_history = fit(reference, kind, EPOCHS)
    _assert_same(weights(resumed), weights(reference))
    if kind == "duel":  # the step's own trackers are restored too
        for name in ("d_loss", "g_loss"):
            np.testing.assert_allclose(
                history.history[name], reference_history.history[name][1:], rtol=1e-6
            )


@pytest.mark.parametrize("second_stop", [(1, 4), (1, 7), (2, 1)])
def test_interrupted_again_while_resuming(tmp_path, second_stop):
    # (1, 4): right after the passed-over batches, before any new backup;
    # (1, 7): after a backup taken in the resumed epoch, which must say epoch 1;
    # (2, 1): in the next epoch.
    backup_dir = tmp_path / "backup"

    def run(*extra):
        backup = keras.callbacks.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ)
        model = build("duel")
        return model, fit(model, "duel", EPOCHS, [backup, *extra])

    with pytest.raises(Stop):
        run(StopAt(*STOP_AT))
    with pytest.raises(Stop):
        run(StopAt(*second_stop))
    resumed, _ = run()
    reference = build("duel")
    fit(reference, "duel", EPOCHS)
    _assert_same(weights(resumed), weights(reference))


def test_plain_keras_replays_the_epoch_which_is_what_stepmodel_avoids(tmp_path):
    # The control: Keras 3's own resume retrains batches 0..3 of epoch 1.
    def plain():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        return model

    backup_dir = tmp_path / "backup"
    with pytest.raises(Stop):
        fit(
            plain(),
            "supervised",
            EPOCHS,
            [
                keras.callbacks.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ),
                StopAt(*STOP_AT),
            ],
        )
    resumed = plain()
    fit(
        resumed,
        "supervised",
        EPOCHS,
        [keras.callbacks.BackupAndRestore(backup_dir, save_freq=SAVE_FREQ)],
    )
    reference = plain()
    fit(reference, "supervised", EPOCHS)
    assert not np.allclose(
        resumed.get_weights()[0], reference.get_weights()[0], rtol=1e-4
    )


def test_epoch_backups_and_fits_without_a_backup_are_untouched(tmp_path):
    model = build("supervised")
    fit(
        model,
        "supervised",
        2,
        [keras.callbacks.BackupAndRestore(tmp_path / "b", save_freq="epoch")],
    )
    reference = build("supervised")
    fit(reference, "supervised", 2)
    _assert_same(weights(model), weights(reference))


# -- a real process, killed with SIGKILL ------------------------------------------
def _run_worker(tmp_path: Path, name: str, **spec) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    return subprocess.run(
        [sys.executable, str(WORKER), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _kill_and_resume(tmp_path: Path, kind: str):
    backup_dir = str(tmp_path / "backup")
    common = {
        "kind": kind,
        "epochs": EPOCHS,
        "backup_dir": backup_dir,
        "save_freq": SAVE_FREQ,
    }
    killed = _run_worker(
        tmp_path, "killed", kill_at=list(STOP_AT), out=str(tmp_path / "k.npz"), **common
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "k.npz").exists()
    metadata = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert metadata == {"epoch": 1, "batch": 3}

    out = tmp_path / "resumed.npz"
    resumed = _run_worker(tmp_path, "resumed", reference=True, out=str(out), **common)
    assert resumed.returncode == 0, resumed.stderr
    arrays = np.load(out)
    n = len([k for k in arrays.files if k.startswith("resumed_")])
    assert n == len([k for k in arrays.files if k.startswith("reference_")]) > 0
    _assert_same(
        [arrays[f"resumed_{i}"] for i in range(n)],
        [arrays[f"reference_{i}"] for i in range(n)],
    )
    return json.loads(Path(f"{out}.json").read_text())


@pytest.mark.slow
def test_sigkill_in_mid_epoch_then_resume_supervised(tmp_path):
    histories = _kill_and_resume(tmp_path, "supervised")
    assert len(histories["resumed"]["loss"]) == 2


@pytest.mark.slow
def test_sigkill_in_mid_epoch_then_resume_duel(tmp_path):
    histories = _kill_and_resume(tmp_path, "duel")
    for name in ("d_loss", "g_loss"):
        np.testing.assert_allclose(
            histories["resumed"][name], histories["reference"][name][1:], rtol=1e-6
        )


@pytest.mark.slow
@pytest.mark.skipif(**NEEDS_GAN)
def test_sigkill_in_mid_epoch_then_resume_gan(tmp_path):
    histories = _kill_and_resume(tmp_path, "gan")
    for name in ("d_loss", "g_loss"):
        np.testing.assert_allclose(
            histories["resumed"][name], histories["reference"][name][1:], rtol=1e-6
        )
