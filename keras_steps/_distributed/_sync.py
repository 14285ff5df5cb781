"""Keeping the ranks' models equal: averaged gradients, rank 0's start, shared statistics."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import torch
import torch.distributed as dist

from keras_steps import _keras_private
from keras_steps._distributed import _group, _overlap
from keras_steps._errors import DistributedError, StepError

OVERLAP_ENV = "KERAS_STEPS_OVERLAP_GRADIENTS"


def average_gradients(grads: Sequence[Any], variables: Sequence[Any]) -> list[Any]:
    """Average ``grads`` over all ranks: one flat all-reduce per dtype.

    A gradient that is ``None`` on a rank counts as zeros there (that rank's
    loss did not depend on the variable); it stays ``None`` only if it is
    ``None`` on every rank, so optimizers skip the same variables everywhere.
    """
    if len(grads) != len(variables):
        raise StepError(
            f"optimizer.apply got {len(grads)} gradients for {len(variables)} variables."
        )
    if not grads:
        return []
    device = variables[0].value.device
    tensors = [
        g if g is not None else torch.zeros(v.shape, dtype=v.value.dtype, device=device)
        for g, v in zip(grads, variables)
    ]
    present = torch.tensor([g is not None for g in grads], dtype=torch.float32, device=device)
    *summed, counts = _group.all_reduce_sum("all-reduce of gradients", [*tensors, present])
    n = _group.world_size()
    return [None if c == 0 else s / n for s, c in zip(summed, counts.tolist())]


def overlap_requested() -> bool:
    """Whether ``KERAS_STEPS_OVERLAP_GRADIENTS`` asks for the overlapped all-reduce.

    Off by default: on CPU with gloo it measured no faster than one
    all-reduce after the backward pass (the "Distributed training" docs page).

    Raises:
        DistributedError: the variable is set to anything but ``0`` or ``1``.
    """
    raw = os.environ.get(OVERLAP_ENV, "0")
    if raw not in ("0", "1"):
        raise DistributedError(f"{OVERLAP_ENV} is {raw!r}; expected 0 (the default) or 1.")
    return raw == "1"


class GradientSync:
    """How an optimizer averages: its :class:`~._overlap.OverlappedAverage`, once set up.

    A plain object: Keras would copy a dict set as an optimizer's attribute.
    """

    def __init__(self) -> None:
        self.overlapped: _overlap.OverlappedAverage | None = None


def average_gradients_in(optimizer: Any, overlap: bool = False) -> None:
    """Make ``optimizer.apply`` average its gradients over ranks first.

    Every update goes through ``apply`` (``keras_steps.backprop``, Keras's
    ``train_step``, ``apply_gradients``), so this covers every step. For a
    ``LossScaleOptimizer`` the outer ``apply`` is wrapped: all ranks then see
    the same gradients and skip a non-finite step together. Idempotent; a
    no-op while no process group is initialised.

    Args:
        optimizer: a ``keras.optimizers.Optimizer``.
        overlap: start the all-reduce during ``backward()``, bucket by
            bucket (:class:`~keras_steps._distributed._overlap.OverlappedAverage`,
            set up at the first ``apply``); otherwise one flat all-reduce in
            ``apply``.
    """
    if getattr(optimizer, "_keras_steps_averages_gradients", False):
        return
    local_apply = optimizer.apply
    state = GradientSync()

    def apply(grads, trainable_variables=None):
        if _group.is_active():
            variables = (
                _keras_private.optimizer_trainable_variables(optimizer)
                if trainable_variables is None
                else list(trainable_variables)
            )
            grads = list(grads)
            if overlap and state.overlapped is None:
                # Hooks start with the second update: the first one's
                # backward ran before the variables were known.
                state.overlapped = _overlap.OverlappedAverage(variables, average_gradients)
                grads = average_gradients(grads, variables)
            elif overlap:
                grads = state.overlapped.average(grads, variables)
            else:
                grads = average_gradients(grads, variables)
        return local_apply(grads, trainable_variables)

    apply.__doc__ = local_apply.__doc__
    optimizer.apply = apply
    optimizer._keras_steps_averages_gradients = True
    optimizer._keras_steps_gradient_sync = state


def unique(variables: Iterable[Any]) -> list[Any]:
    seen: set[int] = set()
    out = []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def assign(variables: Sequence[Any], values: Sequence[torch.Tensor]) -> None:
    for v, value in zip(variables, values):
        v.assign(value)


def broadcast_from_rank_zero(model: Any) -> None:
    """Give every rank rank 0's model and optimizer state and start epoch.

    Runs when fit() starts (after callbacks' ``on_train_begin``, so a
    ``BackupAndRestore`` restore on rank 0 reaches every rank) and when a
    standalone evaluate() starts. Includes seed generators, so random streams
    agree across ranks (see ``keras_steps.batch_random``), and frozen networks once.
    """
    variables = list(model.variables)
    for optimizer in model.optimizers.values():
        variables.extend(optimizer.variables)
    variables = unique(variables)
    if variables:
        values = _group.broadcast("broadcast of rank 0's weights", [v.value for v in variables])
        assign(variables, values)
    epoch = [_keras_private.initial_epoch(model)]
    _group.collective("broadcast of the initial epoch", dist.broadcast_object_list, epoch, src=0)
    _keras_private.set_initial_epoch(model, epoch[0])


def trained_state(model: Any) -> list[Any]:
    """Float non-trainable weights that training updates (BatchNorm statistics).

    Only those of the networks that have an optimizer, and none of a frozen
    (``trainable=False``) layer's: a frozen teacher is never synchronised.
    """
    networks = unique(model.models[role] for role in model.optimizers if role in model.models)
    frozen: set[int] = set()
    for network in networks:
        for layer in _keras_private.layers_of(network):
            if not layer.trainable:
                frozen.update(id(w) for w in layer.weights)
    return unique(
        v
        for network in networks
        for v in network.non_trainable_weights
        if id(v) not in frozen and keras.backend.is_float_dtype(v.dtype)
    )


class TrainedState:
    """Averages a model's :func:`trained_state` over ranks after each step.

    Each rank updated BatchNorm statistics from its own batch; the mean of
    the ranks' moving means is the moving mean of the global batch's means.
    A plain object, so that Keras does not track the cached variable list as
    the model's own.
    """

    def __init__(self) -> None:
        self._variables: list[Any] | None = None

    def average(self, model: Any) -> None:
        if self._variables is None:
            self._variables = trained_state(model)
        if not self._variables:
            return
        summed = _group.all_reduce_sum(
            "all-reduce of BatchNorm-like statistics", [v.value for v in self._variables]
        )
        n = _group.world_size()
        assign(self._variables, [s / n for s in summed])


def rank_zero_value(value: Any, what: str) -> Any:
    """Rank 0's ``value`` (a picklable object) on every rank; ``value`` itself
    when no process group is initialised."""
    if not _group.is_active():
        return value
    box = [value]
    _group.collective(f"broadcast of {what}", dist.broadcast_object_list, box, src=0)
    return box[0]
