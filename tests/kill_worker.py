"""Kill a process with SIGKILL at many points of a save, then load what it left.

``python tests/kill_worker.py save|backup OUT.json [--keras]`` builds the
model once, measures how long one write takes, then forks a child per kill
time that writes and is SIGKILLed that long after it starts; the parent
loads the file (or resumes the backup) after each kill and records what it
found. ``--keras`` writes with Keras's own code instead (the control); with
``--plain`` too, the model is a plain ``keras.Model``, so no keras-steps
code is involved at all.
Forking keeps the 24+ kills to one interpreter start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch

import keras_steps
from keras_steps.callbacks import BackupAndRestore

torch.set_num_threads(1)

KILLS = 24
#: Kill times run from 0 to this multiple of the measured write time, so the
#: last ones land after the rename and the file must be the new one.
SPAN = 2.0
WIDTH = 768  # 2 x 768 x 768 kernels + Adam moments: a file of about 14 MB


PLAIN = "--plain" in sys.argv[3:]


def build(seed: int = 0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(WIDTH, activation="relu")(inputs)
    hidden = keras.layers.Dense(WIDTH, activation="relu")(hidden)
    model_class = keras.Model if PLAIN else keras_steps.StepModel
    model = model_class(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def kernel(model) -> np.ndarray:
    return keras.ops.convert_to_numpy(model.weights[0])


def kill_after(delay: float | None, write) -> float:
    """Fork a child that runs ``write()``; SIGKILL it ``delay`` s after the fork.

    With ``delay=None`` the child finishes. Returns the seconds from the fork
    to the child's end.
    """
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: write, then leave without any cleanup
        try:
            write()
        finally:
            os._exit(0)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return time.perf_counter() - start


def measure(write, times: int = 5) -> float:
    """Median seconds of ``write()`` in a forked child, as the kills see it.

    A forked writer is slower than the parent (its pages are copied on
    write), so the parent's own timing would put every kill too early.
    """
    return statistics.median(kill_after(None, write) for _ in range(times))


def temp_files(directory: str) -> list[str]:
    return [f for f in os.listdir(directory) if f.startswith(".")]


# -- model.save over an existing file ---------------------------------------------
def kill_saves(workdir: str, use_keras: bool) -> dict:
    x, y = data()
    model = build()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    target = os.path.join(workdir, "m.keras")
    pristine = os.path.join(workdir, "old.keras")
    model.save(pristine)
    old = kernel(model)
    for v in model.trainable_variables:  # the state the killed saves write
        v.assign(v + 1.0)
    new = kernel(model)
    save = (lambda: keras.Model.save(model, target)) if use_keras else (lambda: model.save(target))
    duration = measure(save)
    results = []
    # The last write is not killed: it must leave the new file.
    for i in range(KILLS + 1):
        shutil.copy(pristine, target)
        delay = SPAN * duration * i / (KILLS - 1) if i < KILLS else None
        kill_after(delay, save)
        leftovers = temp_files(workdir)
        try:
            loaded = keras_steps.load_model(target)
            found = kernel(loaded)
            outcome = (
                "old"
                if np.array_equal(found, old)
                else ("new" if np.array_equal(found, new) else "other")
            )
        except Exception as exc:  # what broke is the result
            outcome = f"broken: {type(exc).__name__}: {str(exc)[:160]}"
        results.append(
            {
                "delay": delay,
                "outcome": outcome,
                "size": os.path.getsize(target),
                "temp_files": len(leftovers),
            }
        )
        for name in leftovers:
            os.remove(os.path.join(workdir, name))
    return {"write_seconds": duration, "file_bytes": os.path.getsize(pristine), "kills": results}


# -- BackupAndRestore, killed during its backup ----------------------------------
EPOCHS = 3
KILLED_BACKUP = 1  # the backup at the end of epoch 1 replaces epoch 0's


def backup_fit(model, callback, extra=()):
    x, y = data()
    return model.fit(
        x, y, batch_size=8, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[*extra, callback]
    )


class KillDuringBackup(keras.callbacks.Callback):
    """Arm a SIGKILL ``delay`` s after the backup of epoch ``KILLED_BACKUP`` starts.

    Placed before the backup callback, its ``on_epoch_end`` runs right
    before the backup's.
    """

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def on_epoch_end(self, epoch, logs=None):
        if epoch == KILLED_BACKUP:
            timer = threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()


def make_backup(directory: str, use_keras: bool):
    if use_keras:
        return keras.callbacks.BackupAndRestore(directory)
    return BackupAndRestore(directory)


def time_backups(directory: str, use_keras: bool, out: str) -> None:
    """Write to ``out`` how long each backup of a run takes."""
    timed = make_backup(directory, use_keras)
    durations = []
    original = timed.on_epoch_end

    def timing(epoch, logs=None):
        start = time.perf_counter()
        original(epoch, logs)
        durations.append(time.perf_counter() - start)

    timed.on_epoch_end = timing
    backup_fit(build(), timed)
    with open(out, "w") as f:
        json.dump(durations, f)


def kill_backups(workdir: str, use_keras: bool) -> dict:
    reference = build()
    backup_fit(reference, make_backup(os.path.join(workdir, "ref"), use_keras))
    expected = [keras.ops.convert_to_numpy(v) for v in reference.weights]
    # How long one backup takes: an epoch-end backup, timed from the epoch's end.
    # Timed in a forked child, as the kills will run (see measure()).
    timings = os.path.join(workdir, "timings.json")
    kill_after(None, lambda: time_backups(os.path.join(workdir, "timing"), use_keras, timings))
    with open(timings) as f:
        duration = statistics.median(json.load(f))
    results = []
    for i in range(KILLS):
        directory = os.path.join(workdir, f"b{i}")
        delay = SPAN * duration * i / (KILLS - 1)
        finished = os.path.join(workdir, f"finished{i}")
        pid = os.fork()
        if pid == 0:
            try:
                backup_fit(build(), make_backup(directory, use_keras), [KillDuringBackup(delay)])
                # A late kill time can outlast the rest of the run; the timer
                # still ends the process, after the backup was cleaned up.
                open(finished, "w").close()
                time.sleep(60)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and not os.path.exists(finished)
        position = None
        record = os.path.join(directory, "training_metadata.json")
        if os.path.exists(record):
            with open(record, "rb") as f:
                position = f.read().decode(errors="replace")[:120]
        try:
            resumed = build()
            backup_fit(resumed, make_backup(directory, use_keras))
            same = all(
                np.allclose(keras.ops.convert_to_numpy(v), e, rtol=1e-6, atol=1e-7)
                for v, e in zip(resumed.weights, expected, strict=True)
            )
            outcome = "same as uninterrupted" if same else "resumed, weights differ"
        except Exception as exc:  # what broke is the result
            outcome = f"broken: {type(exc).__name__}: {str(exc)[:160]}"
        results.append({"delay": delay, "killed": killed, "record": position, "outcome": outcome})
        shutil.rmtree(directory, ignore_errors=True)
    return {"backup_seconds": duration, "kills": results}


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    use_keras = "--keras" in sys.argv[3:]
    with tempfile.TemporaryDirectory() as workdir:
        run = kill_saves if mode == "save" else kill_backups
        result = run(workdir, use_keras)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
