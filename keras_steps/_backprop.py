"""One optimizer update from one loss: what every hand-written step repeats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["backprop"]


def backprop(loss: Any, optimizer: Any, variables: Sequence[Any]) -> None:
    """Back-propagate ``loss`` into ``variables`` and let ``optimizer`` update them.

    Scales the loss with ``optimizer.scale_loss`` first, so the update is right
    under the ``mixed_float16`` policy (a ``LossScaleOptimizer`` unscales the
    gradients and skips steps with non-finite ones). Gradients are computed
    for ``variables`` only: other networks in the graph, such as a frozen
    discriminator during a generator update, get no gradient work and keep
    no stale ``.grad``.

    Clipping, gradient accumulation and EMA stay the optimizer's business:
    ``clipnorm``, ``global_clipnorm``, ``gradient_accumulation_steps`` and
    ``use_ema`` apply unchanged. Under ``torchrun`` the optimizer averages
    the gradients over all processes before it applies them (a
    ``StepModel``'s optimizers do; see the docs' "Distributed training" page).

    Args:
        loss: a scalar torch tensor.
        optimizer: a ``keras.optimizers.Optimizer``.
        variables: the Keras variables to update, usually a network's
            ``trainable_weights``.
    """
    variables = list(variables)
    params = [v.value for v in variables]
    for p in params:
        p.grad = None
    optimizer.scale_loss(loss).backward(inputs=params)
    with torch.no_grad():
        optimizer.apply([p.grad for p in params], variables)
