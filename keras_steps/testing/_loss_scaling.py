"""The ``loss_scaling`` check: every update goes through the optimizer's ``scale_loss``."""

from __future__ import annotations

import keras

from keras_steps.testing._arrays import max_rel_diff
from keras_steps.testing._harness import Harness
from keras_steps.testing._report import Failed, describe


class _ScaleLossSpy(keras.optimizers.LossScaleOptimizer):
    """A LossScaleOptimizer that records its scale_loss and apply calls."""

    def __init__(self, inner, role, events):
        super().__init__(inner, name=f"{role}_scale_loss_spy")
        # A function, not the list itself: Keras would copy a list attribute
        # into a tracked one.
        self._record = lambda kind: events.append((kind, role))

    def scale_loss(self, loss):
        self._record("scale_loss")
        return super().scale_loss(loss)

    def apply(self, grads, trainable_variables=None):
        self._record("apply")
        return super().apply(grads, trainable_variables)


def check_loss_scaling(harness: Harness) -> None:
    """Each update scales the loss first and back-propagates the scaled loss."""
    events: list[tuple[str, str]] = []

    def sgd(role, spec):
        return keras.optimizers.SGD(learning_rate=0.01)

    def spied(role, spec):
        return _ScaleLossSpy(sgd(role, spec), role, events)

    try:
        plain = harness.build(optimizers=sgd)
        harness.fit(plain, epochs=1)
        scaled = harness.build(optimizers=spied)
        harness.fit(scaled, epochs=1)
    except Failed:
        raise
    except Exception as exc:
        harness.record(exc)
        raise Failed(
            f"training with SGD optimizers raised {describe(exc)}"
        ) from None
    problems = []
    for role in harness.step.optimizer_roles:
        unscaled = applies = 0
        scaled_since_apply = False
        for kind, who in events:
            if who != role:
                continue
            if kind == "scale_loss":
                scaled_since_apply = True
            else:
                applies += 1
                unscaled += not scaled_since_apply
                scaled_since_apply = False
        if applies == 0:
            problems.append(
                f"optimizer {role!r} never applied gradients during one epoch, so "
                "loss scaling could not be checked; update weights with "
                "keras_steps.backprop(loss, model.optimizers[role], variables)."
            )
        elif unscaled:
            problems.append(
                f"the step applied gradients with optimizer {role!r} {unscaled} "
                f"of {applies} times without calling its scale_loss() first: "
                "under mixed_float16 the loss is not scaled and small gradients "
                "underflow to zero. Update weights with keras_steps.backprop("
                "loss, optimizer, variables), which scales the loss."
            )
    if problems:
        raise Failed(*problems)
    for role, (a, b) in _paired(
        harness.updated_networks(plain), harness.updated_networks(scaled)
    ):
        diff = max_rel_diff(a, b)
        if diff > 1e-3:
            problems.append(
                f"with optimizer {role!r} wrapped in a LossScaleOptimizer, the "
                "weights after one epoch differ from an unwrapped run (max "
                f"relative difference {diff:.3g}): the step calls scale_loss() "
                "but does not back-propagate the scaled loss it returns."
            )
    if problems:
        raise Failed(*problems)


def _paired(a: dict, b: dict):
    return [(k, (a[k], b[k])) for k in a]
