"""Callbacks for ``StepModel.fit``: crash-safe backups, learning rates per
optimizer role, TensorBoard.

Keras's own callbacks work on every step; these add what Keras's do not
guarantee, and what a step with several networks or optimizers needs. See the
"Saving and resuming" and "Callbacks" pages of the documentation.
"""

from keras_steps.callbacks._backup import BackupAndRestore
from keras_steps.callbacks._learning_rate import ForOptimizers
from keras_steps.callbacks._tensorboard import TensorBoard

__all__ = ["BackupAndRestore", "ForOptimizers", "TensorBoard"]
