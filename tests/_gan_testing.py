"""Shared by the tests of the ``gan`` and ``wgan-gp`` steps: 2-D data, checks."""

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

import keras_steps

#: Latents for measuring a generator on 2-D points (latent_dim 4).
LATENTS_4 = np.random.default_rng(1).normal(size=(1000, 4)).astype("float32")


def mlp(n_in, n_out, name, width=32):
    return keras.Sequential(
        [
            keras.Input((n_in,)),
            layers.Dense(width),
            layers.LeakyReLU(0.2),
            layers.Dense(width),
            layers.LeakyReLU(0.2),
            layers.Dense(n_out),
        ],
        name=name,
    )


def gaussian_2d(n=512):
    """Points from N((2, -1), diag(0.5, 0.3)^2): far from an untrained generator."""
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 2)) * [0.5, 0.3] + [2.0, -1.0]).astype("float32")


def moment_distance(samples, data):
    """L1 distance between the per-axis means and stds of two point clouds."""
    samples = np.asarray(samples, dtype="float64")
    return float(
        np.abs(samples.mean(0) - data.mean(0)).sum()
        + np.abs(samples.std(0) - data.std(0)).sum()
    )


def assert_moves_toward(model, x, fit, factor=0.3):
    """``fit()`` brings the generated points ``factor`` times closer to ``x``."""
    before = moment_distance(model.predict(LATENTS_4, verbose=0), x)
    fit()
    after = moment_distance(model.predict(LATENTS_4, verbose=0), x)
    for network in model.models.values():
        for w in network.get_weights():
            assert np.isfinite(w).all()
    assert before > 2.0
    assert after < factor * before, (before, after)


def snapshot(model):
    return {role: net.get_weights() for role, net in model.models.items()}


def fit_points(model, callbacks, steps=4):
    """Train ``steps`` batches of 64 2-D points (the optimizer checks' ``fit``)."""
    model.fit(
        gaussian_2d(64 * steps), batch_size=64, epochs=1, shuffle=False, verbose=0,
        callbacks=callbacks,
    )


def check_png(path, size):
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == size


def check_bad_option(step, models, options, field):
    """The options are refused with an error naming the step and the field."""
    with pytest.raises(keras_steps.OptionsError) as info:
        keras_steps.StepModel(models=models, step=step, step_options=options)
    message = str(info.value)
    assert f"'{step}'" in message
    assert repr(field) in message
