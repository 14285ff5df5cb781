"""Checks shared by the tests of single-network steps (sam, mixup, adversarial).

Each check trains tiny models on synthetic data and can fail: it compares
weights or metrics against what the option or policy must produce.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import torch
from PIL import Image
from step_checks import OPTIMIZER_CHECKS

import keras_steps

FORMS = ("functional", "wrapper", "subclassed")


def blobs(n=96, dim=8, classes=3, seed=0, spread=1.0):
    """Gaussian clusters, one per class: float32 inputs and int64 labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(classes, dim))
    y = np.arange(n) % classes
    x = centres[y] + rng.normal(scale=spread, size=(n, dim))
    return x.astype("float32"), y.astype("int64")


def _layers(classes, hidden):
    return [
        keras.layers.Flatten(),
        keras.layers.Dense(hidden, activation="relu"),
        keras.layers.Dense(classes, activation="softmax"),
    ]


class _Subclassed(keras_steps.StepModel):
    def __init__(self, classes, hidden, **kwargs):
        super().__init__(**kwargs)
        self.stack = _layers(classes, hidden)

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def classifier(
    step, options=None, *, form="functional", input_shape=(8,), classes=3, hidden=16
):
    """A small softmax classifier under ``step``, in one of the StepModel forms."""
    if form == "functional":
        inputs = keras.Input(shape=input_shape)
        x = inputs
        for layer in _layers(classes, hidden):
            x = layer(x)
        return keras_steps.StepModel(inputs, x, step=step, step_options=options)
    if form == "wrapper":
        network = keras.Sequential(
            [keras.Input(shape=input_shape), *_layers(classes, hidden)]
        )
        return keras_steps.StepModel(
            models={"model": network}, step=step, step_options=options
        )
    if form == "subclassed":
        # Keywords: two positional arguments would read as (inputs, outputs),
        # as with keras.Model.
        model = _Subclassed(
            classes=classes, hidden=hidden, step=step, step_options=options
        )
        model(np.zeros((1, *input_shape), dtype="float32"))
        return model
    raise AssertionError(form)


def check_form(step, options, form, x, y, **model_kwargs):
    """fit, evaluate and predict work and training lowers the loss."""
    model = classifier(
        step, options, form=form, input_shape=x.shape[1:], **model_kwargs
    )
    model.compile(
        keras.optimizers.Adam(0.02),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0).history
    after = model.evaluate(x, y, verbose=0, return_dict=True)
    assert history["loss"][-1] < history["loss"][0]
    assert after["loss"] < 0.7 * before["loss"], (before, after)
    assert after["accuracy"] > 0.8, after
    predictions = model.predict(x[:5], verbose=0)
    assert predictions.shape == (5, model_kwargs.get("classes", 3))
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)
    return history, after


# -- optimizer options ---------------------------------------------------------
def check_optimizer_option(step, options, option, x, y):
    """The Keras optimizer ``option`` shapes the step's updates (step_checks)."""

    def build(make_optimizer):
        keras.utils.set_random_seed(7)
        model = classifier(step, options, input_shape=x.shape[1:])
        model.compile(make_optimizer(), "sparse_categorical_crossentropy")
        return model

    def fit(model, callbacks, steps):
        repeats = -(-16 * steps // len(x))  # enough rows for `steps` batches of 16
        model.fit(
            np.concatenate([x] * repeats)[: 16 * steps],
            np.concatenate([y] * repeats)[: 16 * steps],
            batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=callbacks,
        )

    OPTIMIZER_CHECKS[option](build, fit)


# -- metrics -------------------------------------------------------------------
class _ZeroAtEpochStart(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        results = self.model.get_metrics_result()
        self.seen.append(results)
        for name, value in results.items():
            assert float(value) == 0.0, (epoch, name, value)


def check_metrics_reset(step, options, expected_names):
    """Every metric restarts at each epoch and at each evaluate()."""
    x, y = blobs()
    model = classifier(step, options)
    model.compile(
        keras.optimizers.Adam(0.01),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callback = _ZeroAtEpochStart()
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    assert len(callback.seen) == 2
    assert set(expected_names) <= set(history.history), history.history.keys()
    for name in expected_names:
        assert all(math.isfinite(v) for v in history.history[name])
    a, b = (x[: len(x) // 2], y[: len(y) // 2]), (x[len(x) // 2 :], y[len(y) // 2 :])
    first_b = model.evaluate(*b, verbose=0, return_dict=True)
    model.evaluate(*a, verbose=0, return_dict=True)
    again_b = model.evaluate(*b, verbose=0, return_dict=True)
    assert set(expected_names) <= set(first_b), first_b.keys()
    for name, value in first_b.items():
        np.testing.assert_allclose(again_b[name], value, rtol=1e-5, err_msg=name)


# -- mixed precision -----------------------------------------------------------
def check_mixed_precision(step, options, policy, x, y, **model_kwargs):
    """Training under ``policy`` is finite and lowers the loss."""
    keras.config.set_dtype_policy(policy)
    model = classifier(step, options, input_shape=x.shape[1:], **model_kwargs)
    model.compile(
        keras.optimizers.Adam(0.02),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=32, epochs=6, verbose=0).history
    for name, values in history.items():
        assert all(math.isfinite(v) for v in values), (name, values)
    assert history["loss"][-1] < 0.8 * history["loss"][0], history["loss"]
    for v in model.trainable_weights:
        assert torch.isfinite(v.value).all(), v.path
    out = model.predict(x[:4], verbose=0)
    assert np.isfinite(out).all()
    assert model.compute_dtype == policy.removeprefix("mixed_")
    return history


# -- options and demos ---------------------------------------------------------
def check_bad_option(step, options, field):
    """A wrong option is an OptionsError naming the step and the field."""
    with pytest.raises(keras_steps.OptionsError, match=rf"(?s)'{step}'.*{field}"):
        classifier(step, options)


def check_demo(module, out_dir):
    """The demo, on a tiny budget, writes its accuracy curves as a real PNG."""
    files = module.step_demo(out_dir, 1, 2)
    assert set(files) == {"curves"}
    with Image.open(files["curves"]) as image:
        assert image.format == "PNG"
        assert image.size == (480, 320)
