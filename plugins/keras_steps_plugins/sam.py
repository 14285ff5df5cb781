"""Sharpness-aware minimisation (SAM, Foret et al. 2020) and its adaptive variant ASAM.

Foret et al. 2020, "Sharpness-Aware Minimization for Efficiently Improving
Generalization" (https://arxiv.org/abs/2010.01412); the adaptive variant is
Kwon et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks"
(https://arxiv.org/abs/2102.11600).

Each step runs two forward/backward passes on the batch:

1. the compiled loss at the weights ``w`` and its gradient ``g``;
2. the loss at ``w + e``, with ``e = rho * g / ||g||`` (ASAM:
   ``e = rho * w**2 * g / || |w| * g ||``), whose gradient the optimizer
   applies to ``w``.

The perturbed weights are never written into the model: the second pass runs
in a ``keras.StatelessScope`` that maps each weight to ``w + e``, so nothing
has to be restored and no rounding creeps in. State the second pass would
change is discarded (``BatchNormalization`` moving statistics follow the
unperturbed pass, as ``disable_running_stats`` does in the reference
implementation), except integer state such as random-seed generators, which
keeps advancing so that ``Dropout`` never repeats a mask.
"""

from __future__ import annotations

import keras
import torch
from pydantic import Field

import keras_steps
from keras_steps_plugins import _compiled

STEP = "sam"


class SamOptions(keras_steps.StepOptions):
    """Options of the ``sam`` step."""

    rho: float = Field(
        0.05,
        gt=0,
        description=(
            "Radius of the neighbourhood whose worst point gives the gradient "
            "(> 0). ASAM usually needs a larger one, around 0.5 to 2."
        ),
    )
    adaptive: bool = Field(
        False,
        description=(
            "ASAM (Kwon et al. 2021): measure the neighbourhood relative to each "
            "weight's magnitude, so rescaling the weights does not change it."
        ),
    )
    eps: float = Field(
        1e-12,
        gt=0,
        description="Added to the gradient norm before dividing by it (> 0).",
    )


@keras_steps.hookimpl
def step_options():
    return SamOptions


@keras_steps.hookimpl
def step_arguments():
    return {"y": "required", "loss": "required"}


@keras_steps.hookimpl
def train_step(model, data, options):
    x, y, sample_weight = _compiled.unpack(data)
    variables = _compiled.trainable_variables(model)
    params = [v.value for v in variables]
    optimizer = model.optimizer

    y_pred = model(x, training=True)
    loss = _compiled.compiled_loss(model, x, y, y_pred, sample_weight)
    _compiled.track_loss(model, loss, x)
    grads = _unscaled_gradients(loss, optimizer, params)
    with torch.no_grad():
        shifts = _perturbation(params, grads, options)
    # w + e with e constant: back-propagating through it gives the SAM
    # gradient on the real weights w.
    perturbed = [p + e for p, e in zip(params, shifts, strict=True)]

    state = [v for v in model.non_trainable_variables if not _is_float(v)]
    mapping = list(zip(variables, perturbed, strict=True))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
        sharp_pred = model(x, training=True)
        sharp_loss = _compiled.compiled_loss(model, x, y, sharp_pred, sample_weight)
    for v in state:
        value = scope.get_current_value(v)
        if value is not None:
            v.assign(value)

    keras_steps.backprop(sharp_loss, optimizer, variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _unscaled_gradients(loss, optimizer, params):
    """Gradients of ``loss``, computed through the optimizer's loss scale.

    Under ``mixed_float16`` the backward pass runs partly in float16, where
    small gradients underflow; scaling the loss first (as every update does)
    avoids that. Dividing by the same scale afterwards gives the true gradient,
    so ``eps`` keeps its meaning (the direction ``g / ||g||`` alone would not
    need it). A gradient that overflowed stays non-finite: the perturbed pass
    then yields a non-finite gradient too, and ``LossScaleOptimizer`` skips the
    update and lowers its scale, exactly as for one-pass training.
    ``torch.autograd.grad`` leaves ``.grad`` of the weights untouched.
    """
    scale = optimizer.scale_loss(torch.ones((), dtype=loss.dtype, device=loss.device))
    grads = torch.autograd.grad(optimizer.scale_loss(loss), params, allow_unused=True)
    return [
        torch.zeros_like(p) if g is None else g / torch.as_tensor(scale).to(g.dtype)
        for p, g in zip(params, grads, strict=True)
    ]


def _perturbation(params, grads, options):
    """The shift ``e`` of each weight: norm ``rho``, along the gradient.

    ASAM measures the norm after scaling each gradient by ``|w|`` and moves
    along ``w**2 * g``, which keeps ``e`` relative to the weights' magnitudes.
    """
    pairs = list(zip(params, grads, strict=True))
    scaled = [p.abs() * g for p, g in pairs] if options.adaptive else grads
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(s.float()) for s in scaled])
    )
    factor = options.rho / (norm + options.eps)
    if options.adaptive:
        return [(p * p) * g * factor.to(p.dtype) for p, g in pairs]
    return [g * factor.to(p.dtype) for p, g in pairs]


def _is_float(variable) -> bool:
    return keras.backend.is_float_dtype(variable.dtype)


@keras_steps.hookimpl
def step_demo(out_dir, epochs, steps):
    """SAM vs plain SGD for an MLP on 8x8 digits: training and validation accuracy."""
    from keras_steps_plugins import _compare

    return _compare.digits_comparison(
        {"supervised": ("supervised", None), "sam": (STEP, {"rho": 0.05})},
        out_dir / "sam_accuracy.png",
        title="8x8 digits: SAM (rho=0.05) vs plain SGD",
        keys=("accuracy", "val_accuracy"),
        epochs=epochs or 40,
        steps=steps,
    )
