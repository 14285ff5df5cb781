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


def deltas(before, after):
    """Per role, the norm of each variable's change."""
    return {
        role: np.array(
            [
                np.linalg.norm(b - a)
                for a, b in zip(before[role], after[role], strict=True)
            ]
        )
        for role in before
    }


def check_gradient_accumulation(make_model, x):
    """With gradient_accumulation_steps=2, weights change every second batch only."""
    model = make_model(learning_rate=0.1, gradient_accumulation_steps=2)
    start = snapshot(model)
    model.train_on_batch(x)
    one = snapshot(model)
    model.train_on_batch(x)
    two = snapshot(model)
    for role in start:
        assert (deltas(start, one)[role] == 0).all(), role
        assert (deltas(one, two)[role] > 0).any(), role


def check_use_ema(make_model, x, steps=4, momentum=0.9):
    """use_ema keeps Keras's moving average of each role's weights, apart from them.

    Checked batch by batch with ``train_on_batch``: ``fit()`` may finally copy
    the averages into the weights, as Keras does for a single optimizer.
    """
    model = make_model(learning_rate=0.1, use_ema=True, ema_momentum=momentum)
    expected = None
    for _ in range(steps):
        model.train_on_batch(x)
        weights = snapshot(model)
        if expected is None:  # Keras starts the average at the first update
            expected = weights
        else:
            expected = {
                role: [
                    momentum * e + (1 - momentum) * w
                    for e, w in zip(expected[role], weights[role], strict=True)
                ]
                for role in weights
            }
    for role, network in model.models.items():
        averages = [
            keras.ops.convert_to_numpy(v)
            for v in model.optimizers[role]._model_variables_moving_average
        ]
        for got, want in zip(averages, expected[role], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert any(
            not np.allclose(a, w)
            for a, w in zip(averages, network.get_weights(), strict=True)
        ), role
    # At the end of fit() each role's averages replace its weights, as Keras
    # does for the single optimizer of a plain model.
    model.fit(x, epochs=1, verbose=0)
    for role, network in model.models.items():
        averages = model.optimizers[role]._model_variables_moving_average
        for average, weight in zip(averages, network.trainable_weights, strict=True):
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(weight), keras.ops.convert_to_numpy(average)
            )


def check_clipping(make_model, x, clip):
    """clipnorm / global_clipnorm bound a learning-rate-100 update."""
    lr, limit = 100.0, 1e-3
    free = make_model(learning_rate=lr)
    clipped = make_model(learning_rate=lr, **{clip: limit})
    clipped.set_weights(free.get_weights())
    start = snapshot(free)
    free.train_on_batch(x)
    clipped.train_on_batch(x)
    free_d, clipped_d = deltas(start, snapshot(free)), deltas(start, snapshot(clipped))
    bound = lr * limit * (1 + 1e-4)
    for role in start:
        # Unclipped, this learning rate moves the weights much further.
        assert np.linalg.norm(free_d[role]) > 10 * bound, role
        if clip == "clipnorm":
            assert (clipped_d[role] <= bound).all(), role
        else:
            assert np.linalg.norm(clipped_d[role]) <= bound, role
        assert (clipped_d[role] > 0).any(), role


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
