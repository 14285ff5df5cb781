"""What the single-network steps share: Keras's compiled loss, loss tracker and metrics.

``sam``, ``mixup`` and ``adversarial`` train the one network of a
:class:`~keras_steps.StepModel` with the loss and metrics given to
``compile()``, exactly as Keras's own ``train_step`` does, so that
``sample_weight``, ``class_weight``, ``add_loss`` losses and weight
regularizers count as in ``keras.Model``.
"""

from __future__ import annotations

import keras
import torch

from keras_steps import StepError

__all__ = [
    "batch_size",
    "check_float_tensor",
    "compiled_loss",
    "track_loss",
    "trainable_variables",
    "unpack",
]


def unpack(data):
    """Split a batch into ``(x, y, sample_weight)`` as Keras does."""
    return keras.utils.unpack_x_y_sample_weight(data)


def batch_size(x) -> int:
    """The number of examples in the (possibly nested) input batch ``x``."""
    return next(t for t in keras.tree.flatten(x) if t is not None).shape[0]


def compiled_loss(model, x, y, y_pred, sample_weight, training=True):
    """The loss given to ``compile()``, plus ``add_loss`` and regularizer losses."""
    return model.compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def track_loss(model, loss, x) -> None:
    """Update the ``loss`` entry of the progress bar and ``History``.

    That is the tracker ``compile`` creates for the compiled loss
    (``StepModel.compiled_loss_tracker()``); updating it, rather than a
    second metric also named ``loss``, keeps one ``loss`` in
    ``model.metrics_names`` and in the list ``evaluate()`` returns.
    """
    tracker = model.compiled_loss_tracker()
    if tracker is None:
        raise StepError(
            f"Step {model.step!r}: the model has no loss tracker; call "
            "model.compile(optimizer=..., loss=...) before fit() or evaluate()."
        )
    tracker.update_state(torch.as_tensor(loss).detach(), sample_weight=batch_size(x))


def trainable_variables(model) -> list:
    """The model's trainable weights; an error when there are none to train."""
    variables = list(model.trainable_weights)
    if not variables:
        raise StepError(
            f"Step {model.step!r}: the model has no trainable weights, so there "
            "is nothing to train."
        )
    return variables


def check_float_tensor(x, step: str, purpose: str):
    """Return ``x`` as a floating-point torch tensor, or say why it cannot be.

    Args:
        x: the input batch.
        step: the step name, for the error message.
        purpose: what the step does to the inputs ("mixes", "perturbs", ...).

    Raises:
        StepError: ``x`` is nested (a dict, list or tuple of inputs) or not
            floating point.
    """
    if not (torch.is_tensor(x) or hasattr(x, "__array__")) or isinstance(
        x, (list, tuple, dict)
    ):
        raise StepError(
            f"Step {step!r} {purpose} the inputs, so it needs x to be one "
            f"floating-point tensor; got {type(x).__name__}."
        )
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        raise StepError(
            f"Step {step!r} {purpose} the inputs, so it needs x to be one "
            f"floating-point tensor; got dtype {x.dtype}."
        )
    return x
