"""Tests of the input-noise step, through the installed entry point."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

import keras_steps


def test_conforms(check_step):
    # The conformance kit: hooks, options, fit/evaluate/predict, metric
    # resets, loss scaling, mixed precision, save/load.
    check_step("input-noise", step_options={"stddev": 0.2})


def test_is_installed_as_a_plugin():
    step = keras_steps.get_step("input-noise")
    assert step.source.kind == "plugin"
    assert step.source.distribution == "keras-steps-input-noise"


def _linear_data(n=256):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = np.array([[2.0], [-1.0], [0.5], [1.5]], "float32")
    return x, x @ w


def _train(stddev):
    keras.utils.set_random_seed(0)
    x, y = _linear_data()
    inputs = keras.Input((4,))
    model = keras_steps.StepModel(
        inputs,
        keras.layers.Dense(1, use_bias=False)(inputs),
        step="input-noise",
        step_options={"stddev": stddev},
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=30, verbose=0)
    return model, history.history["loss"]


def _norm(model):
    (kernel,) = model.trainable_weights
    return float(keras.ops.norm(kernel.value))


def test_trains():
    _, losses = _train(stddev=0.1)
    assert losses[-1] < losses[0] / 10


def test_noise_shrinks_the_weights_like_an_l2_penalty():
    # Unit-variance inputs with noise of variance s**2 give the ridge solution
    # w / (1 + s**2): half the clean weights for s = 1.
    clean, _ = _train(stddev=0.0)
    noisy, _ = _train(stddev=1.0)
    ratio = _norm(noisy) / _norm(clean)
    assert 0.35 < ratio < 0.65, ratio
