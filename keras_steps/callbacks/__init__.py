"""Callbacks for ``StepModel.fit``.

Keras's own callbacks work on every step; these add what Keras's do not
guarantee. See docs/saving.md.
"""

from keras_steps.callbacks._backup import BackupAndRestore

__all__ = ["BackupAndRestore"]
