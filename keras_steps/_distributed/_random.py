"""``batch_random``: noise for this rank's part of the global batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from keras_steps._distributed import _group
from keras_steps._errors import StepError

__all__ = ["batch_random"]

def batch_random(
    draw: Callable, shape: Sequence[int], *, seed: Any = None, blocks: int = 1, **kwargs: Any
) -> Any:
    """Random values for this rank's part of the global batch.

    On one process this is ``draw(shape, seed=seed, **kwargs)``. Under
    ``torchrun`` with W ranks it draws the *global* batch,
    ``(W * shape[0], *shape[1:])``, from ``seed`` (seed generators are equal
    on all ranks: fit() starts from rank 0's) and returns this rank's rows.
    So the ranks draw distinct noise, and together exactly what one process
    draws for the global batch: W ranks with batch B train like one process
    with batch W * B, noise included.

    Rows are split like the data (see the docs' "Distributed training" page): global row
    ``j * W + rank`` is this rank's row ``j``. A draw made of ``blocks``
    stacked per-example blocks (e.g. labels for ``[fakes; reals]``) is split
    block by block.

    Example::

        latents = keras_steps.batch_random(
            keras.random.normal, (batch_size, latent_dim), seed=seed_generator)

    Args:
        draw: a ``keras.random`` function taking ``shape`` and ``seed``
            (``normal``, ``uniform``, ``truncated_normal``, ``randint``, ...).
        shape: this rank's shape; ``shape[0]`` is ``blocks`` times the batch.
        seed: a ``keras.random.SeedGenerator`` (or an int), as for ``draw``.
        blocks: how many per-example blocks are stacked along axis 0.
        **kwargs: passed to ``draw`` (``mean``, ``stddev``, ``dtype``, ...).

    Returns:
        A tensor of ``shape``.
    """
    shape = tuple(int(d) for d in shape)
    if blocks < 1 or not shape or shape[0] % blocks:
        raise StepError(
            f"batch_random: shape[0] must be a multiple of blocks={blocks}; got shape {shape}."
        )
    world = _group.world_size()
    if world == 1:
        return draw(shape, seed=seed, **kwargs)
    per_block = shape[0] // blocks
    full = draw((world * shape[0], *shape[1:]), seed=seed, **kwargs)
    rows = full.reshape(blocks, per_block, world, *shape[1:])[:, :, _group.rank()]
    return rows.reshape(shape)
