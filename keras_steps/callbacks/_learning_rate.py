"""Keras's optimizer callbacks on steps with several optimizer roles.

A step with several optimizer roles (``gan``: generator and discriminator)
has no ``model.optimizer``, which Keras's ``ReduceLROnPlateau`` and
``LearningRateScheduler`` read. Rather than give the model a composite
optimizer that Keras's saving, EMA and loss scaling would also see, the
callback alone is shown a view of the model whose ``optimizer`` groups the
chosen roles' optimizers, in the form Keras's callbacks already handle
(an object with an ``optimizers`` list).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
from keras import ops

from keras_steps import _keras_private
from keras_steps._errors import RoleError, StepError

__all__ = ["ForOptimizers"]

# Keras callbacks that act on an optimizer through model.optimizer (its
# learning rate, its EMA weights): StepModel.fit gives them every optimizer
# role by itself.
_OPTIMIZER_CALLBACKS = (
    keras.callbacks.ReduceLROnPlateau,
    keras.callbacks.LearningRateScheduler,
    keras.callbacks.SwapEMAWeights,
)
# From Keras 3.15, SwapEMAWeights handles a model.optimizer with an
# ``optimizers`` list; before, it reads attributes of one optimizer only.
_SWAP_EMA_KNOWS_GROUPS = tuple(int(p) for p in keras.version().split(".")[:2]) >= (3, 15)

# Keras callbacks whose mode="auto" must know whether the monitored metric
# goes up or down.
_MONITOR_CALLBACKS = (
    keras.callbacks.EarlyStopping,
    keras.callbacks.ModelCheckpoint,
    keras.callbacks.ReduceLROnPlateau,
)


class ForOptimizers(keras.callbacks.Callback):
    """Runs a Keras callback on the optimizers of some or all optimizer roles.

    The wrapped callback sees the model as usual, except that
    ``model.optimizer`` is the group of the chosen roles' optimizers, so
    ``ReduceLROnPlateau`` or ``LearningRateScheduler`` change the learning
    rate of each of them. ``StepModel.fit`` already wraps those two, and
    ``SwapEMAWeights``, in ``ForOptimizers(callback)`` (every role) on a step
    with several optimizer roles; wrap one yourself to limit it to some roles::

        keras_steps.callbacks.ForOptimizers(
            keras.callbacks.ReduceLROnPlateau(monitor="g_loss", patience=2),
            roles=["generator"],
        )

    Keras 3.15 and later change each optimizer of the group from its own
    learning rate. Earlier versions read and set ``model.optimizer.learning_rate``:
    the group's is the first chosen role's, and setting it scales every
    chosen role's learning rate by the same factor (the same result for
    ``ReduceLROnPlateau`` and for a schedule that multiplies ``lr``).
    ``SwapEMAWeights`` on several roles needs Keras 3.15.

    Args:
        callback: a ``keras.callbacks.Callback``.
        roles: optimizer roles of the model's step, or None for all of them.

    Raises:
        TypeError: ``callback`` is not a Keras callback.
        RoleError: (when training starts) a role is not one of the step's
            optimizer roles, or the model is not compiled.
    """

    def __init__(self, callback: keras.callbacks.Callback, roles: Iterable[str] | None = None):
        super().__init__()
        if not isinstance(callback, keras.callbacks.Callback):
            raise TypeError(
                "ForOptimizers(callback=...) takes a keras.callbacks.Callback, got "
                f"{type(callback).__name__}."
            )
        if isinstance(roles, str):
            roles = [roles]
        self.callback = callback
        self.roles = None if roles is None else tuple(roles)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(_OptimizerView(model, _role_optimizers(model, self.roles)))

    def __getattr__(self, name):
        # Hooks and attributes that Keras's CallbackList looks up (on_*_begin,
        # async_safe, ...) are the wrapped callback's. Only called for names
        # this object lacks; "callback" itself is set in __init__.
        if name == "callback":
            raise AttributeError(name)
        return getattr(self.callback, name)

    def __repr__(self) -> str:
        return f"ForOptimizers({self.callback!r}, roles={self.roles!r})"


# Callback's hooks are defined on the base class (as no-ops), so __getattr__
# never sees them: forward each one explicitly.
def _forward(hook: str):
    def method(self, *args, **kwargs):
        return getattr(self.callback, hook)(*args, **kwargs)

    method.__name__ = hook
    return method


for _hook in dir(keras.callbacks.Callback):
    if _hook.startswith("on_"):
        setattr(ForOptimizers, _hook, _forward(_hook))
del _hook


class _RoleOptimizers:
    """The optimizers of some roles, shown to a callback as ``model.optimizer``."""

    def __init__(self, optimizers: dict[str, Any]) -> None:
        self._by_role = optimizers
        self.optimizers = list(optimizers.values())
        self.name = "+".join(optimizers)

    @property
    def learning_rate(self):
        return self.optimizers[0].learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        old = float(ops.convert_to_numpy(self.optimizers[0].learning_rate))
        new = float(ops.convert_to_numpy(value))
        for optimizer in self.optimizers:
            current = float(ops.convert_to_numpy(optimizer.learning_rate))
            optimizer.learning_rate = new if old == 0 else current * (new / old)

    @property
    def iterations(self):
        return self.optimizers[0].iterations

    def __repr__(self) -> str:
        return f"<optimizers of roles {list(self._by_role)}>"


class _OptimizerView:
    """A model seen through a callback: the model, but for ``optimizer``."""

    def __init__(self, model: Any, optimizer: _RoleOptimizers) -> None:
        object.__setattr__(self, "_view_model", model)
        object.__setattr__(self, "optimizer", optimizer)

    def __getattr__(self, name):
        return getattr(self._view_model, name)

    def __setattr__(self, name, value):
        # stop_training and the like must reach the model itself.
        setattr(self._view_model, name, value)


def _role_optimizers(model: Any, roles: Sequence[str] | None) -> _RoleOptimizers:
    step = getattr(model, "_step", None)
    if step is None:
        raise RoleError(
            "ForOptimizers works on a keras_steps.StepModel; got "
            f"{type(model).__name__}. Use the wrapped callback directly on other models."
        )
    optimizers = dict(model.optimizers)
    if not optimizers:
        raise RoleError(
            f"Step {step.name!r} ({step.source}): ForOptimizers needs the model's "
            "optimizers; call compile(optimizer=...) before fit()."
        )
    if roles is None:
        return _RoleOptimizers(optimizers)
    unknown = [r for r in roles if r not in optimizers]
    if unknown or not roles:
        raise RoleError(
            f"Step {step.name!r} ({step.source}): ForOptimizers(roles={list(roles)!r}) "
            f"takes one or more of the step's optimizer roles {list(step.optimizer_roles)}"
            + (f"; unknown: {unknown}." if unknown else "; got none.")
        )
    return _RoleOptimizers({r: optimizers[r] for r in roles})


def fit_callbacks(model: Any, callbacks: Any) -> Any:
    """The callbacks ``StepModel.fit`` passes on to Keras.

    On a step with several optimizer roles, each of Keras's
    ``ReduceLROnPlateau``, ``LearningRateScheduler`` and ``SwapEMAWeights``
    is wrapped in ``ForOptimizers`` (all roles). For each monitor
    callback left at ``mode="auto"`` that watches one of the step's trackers
    (``g_loss``, ``val_g_loss``), the mode is set to the tracker's direction.

    Args:
        model: the ``StepModel`` being trained.
        callbacks: ``fit``'s ``callbacks`` argument (a list, a
            ``CallbackList`` or None).

    Returns:
        The callbacks, as given when nothing changes, else a new list.
    """
    if callbacks is None or isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    callbacks = list(callbacks)
    directions = tracker_directions(model)
    for callback in callbacks:
        inner = callback.callback if isinstance(callback, ForOptimizers) else callback
        if isinstance(inner, _MONITOR_CALLBACKS) and getattr(inner, "mode", None) == "auto":
            direction = directions.get(str(inner.monitor).removeprefix("val_"))
            if direction is not None:
                inner.mode = "max" if direction == "up" else "min"
    if len(model.optimizers) > 1:
        swaps = any(isinstance(cb, keras.callbacks.SwapEMAWeights) for cb in callbacks)
        if swaps and not _SWAP_EMA_KNOWS_GROUPS:
            raise StepError(
                f"Step {model.step!r}: keras.callbacks.SwapEMAWeights on a step with several "
                f"optimizer roles {list(model.optimizers)} needs Keras 3.15 or later "
                f"(installed: {keras.version()}); fit() itself still ends with every "
                "role's EMA averages in the weights."
            )
        callbacks = [
            ForOptimizers(cb) if isinstance(cb, _OPTIMIZER_CALLBACKS) else cb
            for cb in callbacks
        ]
    return callbacks


def tracker_directions(model: Any) -> dict[str, str]:
    """Which way is better for each of the step's metric trackers.

    A tracker's own Keras direction comes first (``keras.metrics.Accuracy``
    goes up); otherwise a name holding ``loss`` goes down and one holding
    ``accuracy`` goes up. Trackers matching neither are left out, so Keras
    asks for ``mode=`` as it does for any metric of unknown direction.

    Returns:
        ``{tracker name: "up" | "down"}``.
    """
    directions = {}
    for value in getattr(model, "step_state", {}).values():
        if not isinstance(value, keras.metrics.Metric):
            continue
        direction = _keras_private.metric_direction(value)
        if direction is None:
            if "loss" in value.name:
                direction = "down"
            elif "accuracy" in value.name:
                direction = "up"
        if direction is not None:
            directions[value.name] = direction
    return directions
