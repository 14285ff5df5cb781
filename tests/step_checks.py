"""Checks shared by the step tests: optimizer options, loss scaling, demo PNGs.

Each optimizer check (``OPTIMIZER_CHECKS``) takes ``build(optimizer) ->
(model, variables)``, which makes a compiled StepModel and names the variables
the step trains, and ``fit(model, callbacks, steps=4)``, which trains it for
``steps`` batches.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
from PIL import Image


def _flat(variables):
    return np.concatenate([np.ravel(keras.ops.convert_to_numpy(v)) for v in variables])


def snapshots(model, variables, fit):
    """Return the variables' values before training and after each batch."""
    snaps = [_flat(variables)]

    def record(batch, logs):
        snaps.append(_flat(variables))

    fit(model, [keras.callbacks.LambdaCallback(on_train_batch_end=record)])
    return snaps


def _per_variable_deltas(model, variables, fit):
    before = [keras.ops.convert_to_numpy(v).copy() for v in variables]
    fit(model, [])
    return [
        np.linalg.norm(keras.ops.convert_to_numpy(v) - b)
        for v, b in zip(variables, before, strict=True)
    ]


def check_clipnorm(build, fit):
    """With SGD(learning_rate=1), clipnorm bounds each variable's step."""
    clip = 1e-3
    # One batch only: the bound holds per update.
    model, variables = build(keras.optimizers.SGD(learning_rate=1.0))
    free = _per_variable_deltas(model, variables, lambda m, cb: fit(m, cb, steps=1))
    model, variables = build(keras.optimizers.SGD(learning_rate=1.0, clipnorm=clip))
    clipped = _per_variable_deltas(model, variables, lambda m, cb: fit(m, cb, steps=1))
    assert max(free) > 10 * clip
    assert max(clipped) <= clip * (1 + 1e-3)
    assert max(clipped) > clip / 2


def check_global_clipnorm(build, fit):
    """With SGD(learning_rate=1), global_clipnorm bounds the whole step."""
    clip = 1e-3
    model, variables = build(keras.optimizers.SGD(learning_rate=1.0))
    free = _per_variable_deltas(model, variables, lambda m, cb: fit(m, cb, steps=1))
    model, variables = build(
        keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=clip)
    )
    clipped = _per_variable_deltas(model, variables, lambda m, cb: fit(m, cb, steps=1))
    assert np.linalg.norm(free) > 10 * clip
    assert np.linalg.norm(clipped) <= clip * (1 + 1e-3)
    assert np.linalg.norm(clipped) > clip / 2


def check_gradient_accumulation(build, fit):
    """With gradient_accumulation_steps=2 the weights move on every 2nd batch only."""
    model, variables = build(
        keras.optimizers.SGD(learning_rate=0.1, gradient_accumulation_steps=2)
    )
    snaps = snapshots(model, variables, lambda m, cb: fit(m, cb, steps=4))
    moved = [not np.array_equal(a, b) for a, b in itertools.pairwise(snaps)]
    assert moved == [False, True, False, True]


def check_use_ema(build, fit):
    """use_ema keeps moving averages that differ from the weights while training
    and replace them when fit() ends."""
    optimizer = keras.optimizers.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.5)
    model, variables = build(optimizer)
    gaps = []

    def record(batch, logs):
        ema = optimizer._model_variables_moving_average
        gaps.append(float(np.max(np.abs(_flat(ema) - _flat(variables)))))

    fit(model, [keras.callbacks.LambdaCallback(on_train_batch_end=record)], steps=4)
    assert len(optimizer._model_variables_moving_average) == len(variables)
    assert min(gaps[1:]) > 0
    np.testing.assert_array_equal(
        _flat(variables), _flat(optimizer._model_variables_moving_average)
    )


OPTIMIZER_CHECKS = {
    "clipnorm": check_clipnorm,
    "global_clipnorm": check_global_clipnorm,
    "gradient_accumulation_steps": check_gradient_accumulation,
    "use_ema": check_use_ema,
}


def spy_on_scale_loss(monkeypatch, optimizer):
    """Record the dtype of every loss passed to ``optimizer.scale_loss``."""
    scaled = []
    original = type(optimizer).scale_loss

    def spy(self, loss):
        scaled.append(keras.backend.standardize_dtype(loss.dtype))
        return original(self, loss)

    monkeypatch.setattr(type(optimizer), "scale_loss", spy)
    return scaled


def check_pngs(files, sizes):
    """Check that ``files`` ({label: path}) are PNGs of ``sizes`` ({label: (w, h)})."""
    assert set(files) == set(sizes)
    for label, path in files.items():
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(path) as image:
            assert image.size == sizes[label], label
