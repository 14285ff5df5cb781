"""Callbacks for ``StepModel.fit``: learning rates per optimizer role, TensorBoard.

Keras's own callbacks work on every step; these add what a step with
several networks or optimizers needs. See the "Callbacks" docs page.
"""

from keras_steps.callbacks._learning_rate import ForOptimizers
from keras_steps.callbacks._tensorboard import TensorBoard

__all__ = ["ForOptimizers", "TensorBoard"]
