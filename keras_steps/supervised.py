"""Keras's own supervised training: compiled loss, metrics, sample and class weights.

The core step, and the default of :class:`~keras_steps.StepModel`. It defers to
the torch backend's ``Trainer.train_step``/``test_step``/``predict_step``, so
``sample_weight``, ``class_weight``, ``add_loss`` losses, ``loss_weights``,
multi-input/output models, dict or tuple data and loss scaling under
``mixed_float16`` behave exactly as in ``keras.Model``.
"""

from __future__ import annotations

import keras

from keras_steps.hookspecs import hookimpl

# The unbound backend methods: calling them skips StepModel's own dispatch.
_train_step = keras.Model.train_step
_test_step = keras.Model.test_step
_predict_step = keras.Model.predict_step


@hookimpl
def train_step(model, data):
    return _train_step(model, data)


@hookimpl
def test_step(model, data):
    return _test_step(model, data)


@hookimpl
def predict_step(model, data):
    return _predict_step(model, data)
