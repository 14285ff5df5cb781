"""Per-example losses to batch losses, as Keras reduces its own, for the shipped steps.

Keras's losses reduce with ``"sum_over_batch_size"``: the per-example losses,
each multiplied by its ``sample_weight``, are summed and divided by the batch
size (not by the sum of the weights). Steps that compute their own losses use
the same rule here, so their numbers mean what a compiled loss's mean.
"""

from __future__ import annotations

from keras import ops

from keras_steps import StepError

__all__ = [
    "additional_losses",
    "per_example_weights",
    "reduce_per_example",
]


def per_example_weights(step: str, sample_weight, batch_size: int):
    """Return ``sample_weight`` as a float32 vector of one weight per example.

    Args:
        step: the step's name, for the error message.
        sample_weight: ``None`` or a tensor with one value per example, shaped
            ``(batch,)`` or ``(batch, 1)``.
        batch_size: the number of examples in the batch.

    Returns:
        ``None`` when ``sample_weight`` is ``None``, else a ``(batch,)`` tensor.

    Raises:
        StepError: the weights are not one per example.
    """
    if sample_weight is None:
        return None
    sample_weight = ops.convert_to_tensor(sample_weight)
    shape = tuple(sample_weight.shape)
    if (
        len(shape) > 2
        or shape[:1] != (batch_size,)
        or (len(shape) == 2 and shape[1] != 1)
    ):
        raise StepError(
            f"Step {step!r} takes one sample_weight per example, shaped "
            f"({batch_size},) or ({batch_size}, 1) for this batch; got shape {shape}."
        )
    return ops.cast(ops.reshape(sample_weight, (batch_size,)), "float32")


def reduce_per_example(values, weights):
    """Reduce per-example losses ``(batch,)`` to a scalar as Keras's losses do.

    Args:
        values: float32 per-example losses, shaped ``(batch,)``.
        weights: ``None`` or float32 per-example weights, shaped ``(batch,)``.

    Returns:
        ``mean(values * weights)`` (the plain mean without weights).
    """
    if weights is not None:
        values = values * weights
    return ops.mean(values)


def additional_losses(model):
    """Sum the losses Keras collects outside the step: regularizers and ``add_loss``.

    Returns:
        A float32 scalar (zero when there are none).
    """
    losses = [ops.sum(ops.cast(loss, "float32")) for loss in model.losses]
    if not losses:
        return ops.zeros((), "float32")
    return ops.sum(ops.stack(losses))
