"""Every use of Keras's private API in keras_steps, in one place.

Each function names why keras_steps needs it; when Keras changes one, this
is the file to update.
"""

from __future__ import annotations

from typing import Any

import keras

# -- saving -----------------------------------------------------------------------


def ask_to_proceed_with_overwrite(filepath: str) -> bool:
    """Keras's interactive prompt of ``save(..., overwrite=False)``.

    ``StepModel.save`` writes to a temporary file, so it asks the question
    itself before Keras would (on the temporary name, which never exists).
    """
    from keras.src.utils import io_utils

    return io_utils.ask_to_proceed_with_overwrite(filepath)


#: What keras_steps.callbacks.BackupAndRestore overrides or reads in Keras's
#: callback: how it writes and reads one backup, and its position counters.
BACKUP_PRIVATE = ("_save_model", "_load_model", "_current_epoch", "_last_batch_seen")


def check_backup_private() -> str | None:
    """None if Keras's BackupAndRestore has what keras_steps overrides, else what is missing."""
    callback = keras.callbacks.BackupAndRestore("unused")
    missing = [name for name in BACKUP_PRIVATE if not hasattr(callback, name)]
    return ", ".join(missing) or None


def backup_position(callback: Any) -> tuple[int, int]:
    """(epoch, last batch seen) that Keras's BackupAndRestore writes to its metadata."""
    return callback._current_epoch, callback._last_batch_seen


def set_initial_epoch(model: Any, epoch: int) -> None:
    """Make ``fit`` start at ``epoch``, as Keras's BackupAndRestore does on restore."""
    model._initial_epoch = epoch
