"""BackupAndRestore resumes an interrupted fit() exactly, even in mid-epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from resume_worker import NEEDS_GAN, Stop, StopAt, build, fit, weights

import keras_steps
from keras_steps.callbacks import BackupAndRestore

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


def _position(backup_dir) -> dict:
    """Epoch and batch of the backup's metadata (keras_steps' also names its weights)."""
    metadata = json.loads((Path(backup_dir) / "training_metadata.json").read_text())
    return {key: metadata[key] for key in ("epoch", "batch")}


CALLBACKS = {"keras": keras.callbacks.BackupAndRestore, "keras_steps": BackupAndRestore}


@pytest.mark.parametrize("callback", sorted(CALLBACKS))
@pytest.mark.parametrize("kind", ["supervised", "duel"])
def test_resume_in_mid_epoch_matches_an_uninterrupted_run(tmp_path, kind, callback):
    backup_dir = tmp_path / "backup"
    backup = CALLBACKS[callback]
    with pytest.raises(Stop):
        fit(
            build(kind),
            kind,
            EPOCHS,
            [backup(backup_dir, save_freq=SAVE_FREQ), StopAt(*STOP_AT)],
        )
    assert _position(backup_dir) == {"epoch": 1, "batch": 3}

    resumed = build(kind)  # a fresh model, as in a new process
    history = fit(resumed, kind, EPOCHS, [backup(backup_dir, save_freq=SAVE_FREQ)])
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


@pytest.mark.parametrize("callback", sorted(CALLBACKS))
@pytest.mark.parametrize("second_stop", [(1, 4), (1, 7), (2, 1)])
def test_interrupted_again_while_resuming(tmp_path, second_stop, callback):
    # (1, 4): right after the passed-over batches, before any new backup;
    # (1, 7): after a backup taken in the resumed epoch, which must say epoch 1;
    # (2, 1): in the next epoch.
    backup_dir = tmp_path / "backup"

    def run(*extra):
        backup = CALLBACKS[callback](backup_dir, save_freq=SAVE_FREQ)
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


# -- a backup interrupted between its two writes ------------------------------------
class _CutAfterWeights(keras.callbacks.Callback):
    """Make the ``n``-th weights write of a backup the last thing the process does.

    Wraps the model's ``save_weights`` (which the backup calls first, before
    its metadata) to raise :class:`Stop` once it has written the file: on
    disk that is what a kill between the two writes leaves.
    """

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def on_train_begin(self, logs=None):
        model, save, calls = self.model, self.model.save_weights, []

        def save_then_stop(*args, **kwargs):
            save(*args, **kwargs)
            calls.append(1)
            if len(calls) == self.n:
                raise Stop

        model.save_weights = save_then_stop


@pytest.mark.parametrize("callback", sorted(CALLBACKS))
def test_a_backup_cut_between_weights_and_metadata(tmp_path, callback):
    # Default arguments (a backup at each epoch's end); the second backup is
    # cut after its weights. Keras's callback then holds the weights of epoch
    # 2 with the metadata of epoch 1, and resumes by training epoch 2 again;
    # even with StepModel's atomic save_weights, no public API can order its
    # two writes. keras_steps' keeps the first backup until its record moves.
    backup = CALLBACKS[callback]
    with pytest.raises(Stop):
        fit(build("duel"), "duel", EPOCHS, [_CutAfterWeights(2), backup(tmp_path / "b")])
    assert _position(tmp_path / "b")["epoch"] == 1
    resumed = build("duel")
    history = fit(resumed, "duel", EPOCHS, [backup(tmp_path / "b")])
    assert history.epoch == [1, 2]
    reference = build("duel")
    fit(reference, "duel", EPOCHS)
    same = all(
        np.allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(weights(resumed), weights(reference), strict=True)
    )
    assert same == (callback == "keras_steps")


def test_backups_keep_one_weights_file_and_no_temporary_files(tmp_path):
    backup = BackupAndRestore(tmp_path / "b", save_freq=2, delete_checkpoint=False)
    fit(build("supervised"), "supervised", 2, [backup])
    record = json.loads((tmp_path / "b" / "training_metadata.json").read_text())
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        record["weights"],
        "training_metadata.json",
    ]
    # Every 2 of 8 batches, 2 epochs: the 8th backup, after batch 7 of epoch 1.
    assert (record["epoch"], record["batch"], record["serial"]) == (1, 7, 8)


def test_double_checkpoint_is_refused_as_unneeded(tmp_path):
    with pytest.raises(keras_steps.StepError, match="double_checkpoint=True.*not needed"):
        BackupAndRestore(tmp_path, double_checkpoint=True)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ("", "not a backup record"),
        ('{"epoch": 1, "batch": 0, "weights": "../x.weights.h5", "serial": 1}', "weights"),
        ('{"epoch": -1, "batch": 0, "weights": "backup-000001.weights.h5", "serial": 1}', "epoch"),
        ('{"epoch": 1, "batch": 0, "weights": "backup-000009.weights.h5", "serial": 9}', "missing"),
    ],
)
def test_a_damaged_backup_record_is_an_error(tmp_path, record, match):
    directory = tmp_path / "b"
    directory.mkdir()
    (directory / "training_metadata.json").write_text(record)
    with pytest.raises(keras_steps.DamagedFileError, match=match):
        fit(build("supervised"), "supervised", 1, [BackupAndRestore(directory)])


def test_resumes_a_backup_written_by_keras_s_own_callback(tmp_path):
    directory = tmp_path / "b"
    with pytest.raises(Stop):
        fit(
            build("duel"),
            "duel",
            EPOCHS,
            [keras.callbacks.BackupAndRestore(directory, save_freq=SAVE_FREQ), StopAt(*STOP_AT)],
        )
    resumed = build("duel")
    fit(resumed, "duel", EPOCHS, [BackupAndRestore(directory, save_freq=SAVE_FREQ)])
    reference = build("duel")
    fit(reference, "duel", EPOCHS)
    _assert_same(weights(resumed), weights(reference))


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


def _kill_and_resume(tmp_path: Path, kind: str, callback: str = "keras"):
    backup_dir = str(tmp_path / "backup")
    common = {
        "callback": callback,
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
    assert _position(backup_dir) == {"epoch": 1, "batch": 3}

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
@pytest.mark.parametrize("callback", sorted(CALLBACKS))
def test_sigkill_in_mid_epoch_then_resume_duel(tmp_path, callback):
    histories = _kill_and_resume(tmp_path, "duel", callback)
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


def test_keras_s_own_callback_gets_a_warning_and_keras_steps_none(tmp_path):
    with pytest.warns(UserWarning, match="keras_steps.callbacks.BackupAndRestore takes"):
        fit(build("supervised"), "supervised", 1, [keras.callbacks.BackupAndRestore(tmp_path)])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="keras.callbacks.BackupAndRestore")
        fit(build("supervised"), "supervised", 1, [BackupAndRestore(tmp_path)])


def test_keras_s_double_checkpoint_still_falls_back_on_a_damaged_backup(tmp_path):
    # StepModel.load_weights raises DamagedFileError, an OSError like h5py's,
    # so Keras's fallback to its previous backup still runs.
    directory = tmp_path / "b"

    def backup():
        return keras.callbacks.BackupAndRestore(
            directory, double_checkpoint=True, delete_checkpoint=False
        )

    fit(build("duel"), "duel", 2, [backup()])
    (directory / "latest.weights.h5").write_bytes(b"")
    resumed = build("duel")
    history = fit(resumed, "duel", EPOCHS, [backup()])
    assert history.epoch == [1, 2]  # from the previous backup, after epoch 0
    reference = build("duel")
    fit(reference, "duel", EPOCHS)
    _assert_same(weights(resumed), weights(reference))
