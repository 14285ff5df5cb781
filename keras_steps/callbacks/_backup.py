"""``BackupAndRestore`` whose backup survives a kill at any moment.

Keras's callback writes ``latest.weights.h5`` over the previous backup, then
``training_metadata.json`` (epoch and batch) over the previous one, each by
truncating the file and writing into it. A kill during either write leaves a
file that cannot be read; a kill between them leaves new weights with the old
position, which resumes silently at the wrong epoch or batch. Making each
write atomic is not enough, and the writes happen inside the callback's
private ``_save_model``, so there is no public way to fix them.

Here every backup's weights go to a new file, ``backup-NNNNNN.weights.h5``,
and the metadata file, written atomically after it, names that file: the
metadata is the commit record. A kill before the record is replaced leaves
the previous record and the previous weights (deleted only after the new
record is in place); a kill after it, the new pair.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import keras

from keras_steps import _atomic, _keras_private
from keras_steps._errors import DamagedFileError, StepError

__all__ = ["BackupAndRestore"]

_WEIGHTS = re.compile(r"backup-(\d{6,})\.weights\.h5")
_FORMAT = 1


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's ``BackupAndRestore``, with backups that a kill cannot break.

    Use it as Keras's (same arguments, same ``backup_dir`` layout for the
    metadata file, same mid-epoch resume by ``StepModel.fit``)::

        from keras_steps.callbacks import BackupAndRestore
        model.fit(x, y, epochs=10, callbacks=[BackupAndRestore("backup/")])

    A process killed at any moment, during a backup included, leaves a
    backup that resumes exactly: the previous one or the new one, never a
    broken file nor new weights with an old epoch. ``double_checkpoint`` is
    therefore not needed, and refused.

    Args:
        backup_dir: directory of the backup; one run's, not shared.
        save_freq: ``"epoch"`` or a number of batches, as in Keras.
        double_checkpoint: must be False (see above).
        delete_checkpoint: delete ``backup_dir`` when training ends, as in
            Keras.

    Raises:
        StepError: ``double_checkpoint=True``, or this Keras version's
            ``BackupAndRestore`` lacks the methods this class overrides.
        DamagedFileError: on restore, the metadata file is unreadable or
            names weights that are missing (changed by something else).
    """

    def __init__(
        self,
        backup_dir: str,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        missing = _keras_private.check_backup_private()
        if missing:
            raise StepError(
                f"keras_steps.callbacks.BackupAndRestore: Keras {keras.__version__}'s "
                f"BackupAndRestore has no {missing}, which this callback overrides; "
                "it cannot make its backups safe on this Keras version."
            )
        if double_checkpoint:
            raise StepError(
                "keras_steps.callbacks.BackupAndRestore(double_checkpoint=True): "
                "not needed and refused. Every backup is complete or not taken, so "
                "there is no broken backup to fall back from; the previous backup "
                "is kept until the next one is fully written."
            )
        super().__init__(
            os.fspath(backup_dir), save_freq=save_freq, delete_checkpoint=delete_checkpoint
        )

    # -- writing ---------------------------------------------------------------
    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        previous = self._read_record()
        serial = previous["serial"] + 1 if previous else 1
        name = f"backup-{serial:06d}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        # A new name each time: the record still names the previous file
        # while this one is written. StepModel writes it atomically anyway.
        self.model.save_weights(path, overwrite=True)
        _atomic.fsync(path)
        epoch, batch = _keras_private.backup_position(self)
        record = {
            "epoch": epoch,
            "batch": batch,
            "weights": name,
            "serial": serial,
            "format": _FORMAT,
        }
        _atomic.write_bytes(_keras_private.backup_metadata_path(self), json.dumps(record).encode())
        self._remove_stale(keep=name)

    def _remove_stale(self, keep: str) -> None:
        # Earlier backups, and temporary files of writes that a kill cut short.
        for entry in os.listdir(self.backup_dir):
            stale = (_WEIGHTS.fullmatch(entry) and entry != keep) or (
                entry.startswith(".") and _atomic.TEMP_MARK in entry
            )
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.backup_dir, entry))

    # -- reading ---------------------------------------------------------------
    def _read_record(self) -> dict | None:
        path = _keras_private.backup_metadata_path(self)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            content = f.read()
        try:
            record = json.loads(content)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "weights" not in record:
            if isinstance(record, dict) and {"epoch", "batch"} <= set(record):
                return None  # written by Keras's own callback: see _load_model
            raise self._damaged(f"it is not a backup record: {content[:200]!r}")
        checks = {
            "epoch": isinstance(record.get("epoch"), int) and record["epoch"] >= 0,
            "batch": isinstance(record.get("batch"), int),
            "serial": isinstance(record.get("serial"), int) and record["serial"] >= 1,
            "weights": isinstance(record.get("weights"), str)
            and _WEIGHTS.fullmatch(record["weights"]) is not None,
        }
        bad = [field for field, ok in checks.items() if not ok]
        if bad:
            raise self._damaged(f"its fields {bad} are missing or malformed: {record}")
        return record

    def _damaged(self, why: str) -> DamagedFileError:
        return DamagedFileError(
            f"BackupAndRestore({self.backup_dir!r}): the backup record "
            f"{_keras_private.backup_metadata_path(self)!r} is damaged: {why}. This callback "
            "writes it atomically, so something else changed it; delete the "
            "directory to start over."
        )

    def _load_model(self):
        record = self._read_record()
        if record is None:
            # Nothing backed up yet, or a backup of Keras's own callback.
            return super()._load_model()
        if not self.model.built:
            raise StepError(
                "BackupAndRestore needs a built model before fit() restores it; "
                f"model {self.model.name!r} is unbuilt. Call it on a batch first."
            )
        weights = os.path.join(self.backup_dir, record["weights"])
        if not os.path.isfile(weights):
            raise self._damaged(f"it names {record['weights']!r}, which is missing")
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # as Keras's callback does
        self.model.load_weights(weights)
        _keras_private.set_initial_epoch(self.model, record["epoch"])
