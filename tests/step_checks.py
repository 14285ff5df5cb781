"""Checks shared by the step tests: optimizer options, loss scaling, demo PNGs.

Each optimizer check (``OPTIMIZER_CHECKS``) takes ``build(make_optimizer)``,
which makes a compiled StepModel whose every optimizer role gets its own
``make_optimizer()``, and ``fit(model, callbacks, steps)``, which trains it
for ``steps`` batches with ``fit``. The checks look at each optimizer role's
variables on its own, so a two-network step must honour the option for both.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
from PIL import Image


def _flat(variables):
    return np.concatenate([np.ravel(keras.ops.convert_to_numpy(v)) for v in variables])


def role_variables(model):
    """The variables each optimizer role updates: its network's, or all of them."""
    roles = list(model.optimizers)
    if len(roles) == 1:
        return {roles[0]: list(model.trainable_weights)}
    return {role: list(model.models[role].trainable_weights) for role in roles}


def _sgd(**kwargs):
    return lambda: keras.optimizers.SGD(**kwargs)


def _deltas_after_one_batch(build, fit, **sgd):
    """Per role, each variable's change over one batch, with SGD(**sgd)."""
    model = build(_sgd(**sgd))
    before = {r: [_flat([v]) for v in vs] for r, vs in role_variables(model).items()}
    fit(model, [], steps=1)
    return {
        role: [np.linalg.norm(_flat([v]) - b) for v, b in zip(vs, before[role], strict=True)]
        for role, vs in role_variables(model).items()
    }


def check_clipnorm(build, fit):
    """With SGD(learning_rate=1), clipnorm bounds each variable's step, for every role."""
    clip = 1e-3
    free = _deltas_after_one_batch(build, fit, learning_rate=1.0)
    clipped = _deltas_after_one_batch(build, fit, learning_rate=1.0, clipnorm=clip)
    for role in free:
        assert max(free[role]) > 10 * clip, role
        assert max(clipped[role]) <= clip * (1 + 1e-3), role
        assert max(clipped[role]) > clip / 2, role


def check_global_clipnorm(build, fit):
    """With SGD(learning_rate=1), global_clipnorm bounds each role's whole step."""
    clip = 1e-3
    free = _deltas_after_one_batch(build, fit, learning_rate=1.0)
    clipped = _deltas_after_one_batch(build, fit, learning_rate=1.0, global_clipnorm=clip)
    for role in free:
        assert np.linalg.norm(free[role]) > 10 * clip, role
        np.testing.assert_allclose(np.linalg.norm(clipped[role]), clip, rtol=1e-3, err_msg=role)


def check_gradient_accumulation(build, fit):
    """With gradient_accumulation_steps=2 every role moves on every 2nd batch only."""
    model = build(_sgd(learning_rate=0.1, gradient_accumulation_steps=2))
    variables = role_variables(model)
    snaps = [{r: _flat(vs) for r, vs in variables.items()}]

    def record(batch, logs):
        snaps.append({r: _flat(vs) for r, vs in variables.items()})

    fit(model, [keras.callbacks.LambdaCallback(on_train_batch_end=record)], steps=4)
    for role in variables:
        moved = [not np.array_equal(a[role], b[role]) for a, b in itertools.pairwise(snaps)]
        assert moved == [False, True, False, True], role


def check_use_ema(build, fit):
    """use_ema keeps Keras's moving average of each role's weights, batch by batch,
    and swaps it into the weights when fit() ends."""
    momentum = 0.5
    model = build(_sgd(learning_rate=0.1, use_ema=True, ema_momentum=momentum))
    variables = role_variables(model)
    expected, gaps = {}, []

    def record(batch, logs):
        for role, vs in variables.items():
            weights = _flat(vs)
            # Keras starts the average at the first updated weights.
            expected[role] = (
                weights if role not in expected
                else momentum * expected[role] + (1 - momentum) * weights
            )
            ema = _flat(model.optimizers[role]._model_variables_moving_average)
            np.testing.assert_allclose(ema, expected[role], rtol=1e-5, atol=1e-6)
            gaps.append(float(np.max(np.abs(ema - weights))))

    fit(model, [keras.callbacks.LambdaCallback(on_train_batch_end=record)], steps=4)
    assert len(expected) == len(variables)
    assert min(gaps[len(variables):]) > 0  # after the first batch, averages lag
    for role, vs in variables.items():
        average = model.optimizers[role]._model_variables_moving_average
        np.testing.assert_array_equal(_flat(vs), _flat(average), err_msg=role)


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
