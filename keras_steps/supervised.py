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


# Each takes the hook's full signature, so StepModel calls it with no adapter.
@hookimpl
def train_step(model, data, options):
    return _train_step(model, data)


@hookimpl
def test_step(model, data, options):
    return _test_step(model, data)


@hookimpl
def predict_step(model, data, options):
    return _predict_step(model, data)


@hookimpl
def step_demo(epochs, steps):
    """The seed guide's first example: Dense(32 -> 1) regression, mse and mae."""
    import numpy as np

    from keras_steps import StepModel

    keras.utils.set_random_seed(1337)
    x = np.random.random((1000, 32)).astype("float32")
    y = (x @ np.linspace(-1.0, 1.0, 32, dtype="float32"))[:, None] / 4.0
    inputs = keras.Input(shape=(32,))
    model = StepModel(inputs, keras.layers.Dense(1)(inputs), step="supervised")
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    history = model.fit(x, y, epochs=epochs or 5, steps_per_epoch=steps, verbose="auto")
    for key, values in history.history.items():
        print(f"{key}: " + " ".join(f"{v:.4f}" for v in values))
    return {}
