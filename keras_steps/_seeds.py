"""The one definition of a step's ``seed`` option, shared by every step."""

from __future__ import annotations

from typing import Any

from pydantic import Field

__all__ = ["MAX_SEED", "seed_field"]

MAX_SEED = 2**31 - 1
"""The largest seed, ``2**31 - 1``: Keras's torch backend keeps a
``SeedGenerator``'s state in int32, so a larger seed fails at the first draw,
far from the option."""

_BOUNDS = f"an int in [0, {MAX_SEED}] (2**31 - 1)"


def seed_field(
    default: int | None = None, description: str = "Seed of the step's random stream."
) -> Any:
    """A pydantic field for a step's ``seed`` option, with the shared bounds.

    Use it as the default of an ``int`` (or ``int | None``) option, so that
    every step takes the same seeds and says so in its description::

        class Options(keras_steps.StepOptions):
            seed: int | None = keras_steps.seed_field(
                None, "Seed of the noise; None draws one from Keras's global seed."
            )

    Args:
        default: the default seed; ``None`` (for an ``int | None`` option)
            lets ``keras.random.SeedGenerator`` draw one from Keras's global
            seed.
        description: what the seed drives; the bounds are appended.

    Returns:
        A ``pydantic.Field`` that accepts ints in ``[0, keras_steps.MAX_SEED]``
        (``2**31 - 1``, what the torch backend's seed state holds; and
        ``None`` when the annotation allows it).

    Raises:
        ValueError: ``default`` is outside those bounds or not an int.
    """
    if default is not None and (
        isinstance(default, bool)
        or not isinstance(default, int)
        or not 0 <= default <= MAX_SEED
    ):
        raise ValueError(f"seed_field default must be None or {_BOUNDS}; got {default!r}.")
    return Field(
        default,
        ge=0,
        le=MAX_SEED,
        description=f"{description.rstrip()} A seed is {_BOUNDS}.",
    )
