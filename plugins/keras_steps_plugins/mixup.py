"""Training on mixed batches: mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019).

mixup: Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"
(https://arxiv.org/abs/1710.09412). CutMix: Yun et al. 2019, "CutMix:
Regularization Strategy to Train Strong Classifiers with Localizable Features"
(https://arxiv.org/abs/1905.04899).

Each training batch is paired with a random permutation of itself and one
ratio ``lam ~ Beta(alpha, alpha)`` is drawn for the batch. mixup trains on
``lam * x + (1 - lam) * x[perm]``; CutMix pastes a box of ``x[perm]`` covering
about ``1 - lam`` of each image and sets ``lam`` to the share of pixels left
uncovered. The loss is the compiled loss against both label sets,

    lam * loss(y, y_pred) + (1 - lam) * loss(y[perm], y_pred),

which equals the loss against mixed labels ``lam * y + (1 - lam) * y[perm]``
for every cross-entropy (the loss is linear in the target) and has the same
gradient for mean squared error. Labels can therefore stay as they are:
integer class ids with ``sparse_categorical_crossentropy``, one-hot or
probability vectors with ``categorical_crossentropy``.

Evaluation and prediction are plain supervised ones: nothing is mixed.
"""

from __future__ import annotations

from typing import Literal

import keras
import torch
from pydantic import Field

import keras_steps
from keras_steps_plugins import _compiled

STEP = "mixup"

#: alpha when none is given: Zhang et al.'s ImageNet value, Yun et al.'s value.
DEFAULT_ALPHA = {"mixup": 0.2, "cutmix": 1.0}


class MixupOptions(keras_steps.StepOptions):
    """Options of the ``mixup`` step."""

    mode: Literal["mixup", "cutmix"] = Field(
        "mixup",
        description=(
            '"mixup" blends whole inputs; "cutmix" pastes a box from another '
            "image (inputs of shape (batch, height, width, channels), or "
            "channels first under that image_data_format)."
        ),
    )
    alpha: float | None = Field(
        None,
        gt=0,
        description=(
            "Beta(alpha, alpha) parameter of the mixing ratio (> 0); small values "
            "keep most examples close to one source. None: 0.2 for mixup, 1.0 "
            "for cutmix (the papers' settings)."
        ),
    )
    seed: int | None = keras_steps.seed_field(
        None,
        "Seed of the step's random generator (ratios, permutations, boxes); "
        "None draws one from Keras's global seed.",
    )


def mixing_alpha(options: MixupOptions) -> float:
    """The Beta parameter in effect: ``options.alpha`` or the mode's default."""
    return DEFAULT_ALPHA[options.mode] if options.alpha is None else options.alpha


@keras_steps.hookimpl
def step_options():
    return MixupOptions


@keras_steps.hookimpl
def step_arguments():
    return {
        "y": "required",
        "loss": "required",
        "nested_x": keras_steps.Refused(
            "it mixes the inputs, so x must be one floating-point tensor"
        ),
    }


@keras_steps.hookimpl
def step_build(options):
    return {
        "seed_generator": keras.random.SeedGenerator(options.seed, name="mixup_seed")
    }


@keras_steps.hookimpl
def train_step(model, data, options):
    x, y, sample_weight = _compiled.unpack(data)
    x = _compiled.check_float_tensor(x, STEP, "mixes")
    seed = model.step_state["seed_generator"]
    alpha = mixing_alpha(options)
    # One ratio per global batch, as on one process: the seed generator is
    # equal on all ranks under torchrun, so they all draw the same ratio (and
    # CutMix box). The pairing keys are per example: each rank sorts its own
    # rows of the global draw, so ranks pair their examples independently.
    lam = keras.random.beta((), alpha, alpha, seed=seed)
    keys = keras_steps.batch_random(keras.random.uniform, (x.shape[0],), seed=seed)
    perm = torch.argsort(keys)
    if options.mode == "mixup":
        mixed = lam * x + (1.0 - lam) * x[perm]
    else:
        mixed, lam = _cutmix(x, perm, lam, seed)

    def permuted(tree):
        return (
            None if tree is None else keras.tree.map_structure(lambda t: t[perm], tree)
        )

    y_b, weight_b = permuted(y), permuted(sample_weight)
    y_pred = model(mixed, training=True)
    loss = lam * _compiled.compiled_loss(model, mixed, y, y_pred, sample_weight) + (
        1.0 - lam
    ) * _compiled.compiled_loss(model, mixed, y_b, y_pred, weight_b)
    _compiled.track_loss(model, loss, x)
    keras_steps.backprop(loss, model.optimizer, _compiled.trainable_variables(model))

    # Metrics such as accuracy take one label per example: the source that
    # covers more of the mixed example (the batch shares one ratio).
    def dominant(a, b):
        if a is None:
            return None
        return keras.tree.map_structure(
            lambda s, t: torch.where(lam >= 0.5, s, t), a, b
        )

    return model.compute_metrics(
        mixed,
        dominant(y, y_b),
        y_pred,
        sample_weight=dominant(sample_weight, weight_b),
    )


def _cutmix(x, perm, lam, seed):
    """Paste a box of ``x[perm]`` into ``x``; return the images and the corrected ratio.

    The box has sides ``sqrt(1 - lam)`` times the image's, a uniformly drawn
    centre, and is clipped at the border (Yun et al.'s reference code), so the
    ratio is recomputed from the pixels actually left: ``1 - box / image``.
    """
    if x.ndim != 4:
        raise keras_steps.StepError(
            f"Step {STEP!r} with mode='cutmix' pastes boxes between images, so it "
            f"needs inputs of rank 4 (batch, height, width, channels); got shape "
            f"{tuple(x.shape)}. Use mode='mixup' for other inputs."
        )
    channels_last = keras.config.image_data_format() == "channels_last"
    height, width = x.shape[1:3] if channels_last else x.shape[2:4]
    cut = torch.sqrt(1.0 - lam)
    half_h = torch.floor(height * cut) // 2
    half_w = torch.floor(width * cut) // 2
    centre = torch.floor(
        keras.random.uniform((2,), seed=seed) * x.new_tensor([height, width])
    )
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= (centre[0] - half_h).clamp(0, height)) & (
        rows < (centre[0] + half_h).clamp(0, height)
    )
    in_cols = (cols >= (centre[1] - half_w).clamp(0, width)) & (
        cols < (centre[1] + half_w).clamp(0, width)
    )
    box = in_rows[:, None] & in_cols[None, :]
    lam = 1.0 - box.sum().to(x.dtype) / (height * width)
    box = box[None, :, :, None] if channels_last else box[None, None, :, :]
    return torch.where(box, x[perm], x), lam


@keras_steps.hookimpl
def step_demo(out_dir, epochs, steps):
    """mixup vs plain supervised training of a small MLP on 8x8 digits."""
    from keras_steps_plugins import _compare

    return _compare.digits_comparison(
        {
            "supervised": ("supervised", None),
            "mixup": (STEP, {"alpha": 0.4, "seed": 0}),
        },
        out_dir / "mixup_accuracy.png",
        title="8x8 digits: mixup (alpha=0.4) vs plain SGD",
        keys=("accuracy", "val_accuracy"),
        epochs=epochs or 40,
        steps=steps,
    )
