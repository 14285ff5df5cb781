"""Adversarial training with FGSM or PGD (Goodfellow et al. 2015; Madry et al. 2018).

FGSM: Goodfellow et al. 2015, "Explaining and Harnessing Adversarial Examples"
(https://arxiv.org/abs/1412.6572). PGD: Madry et al. 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks"
(https://arxiv.org/abs/1706.06083).

For each batch the step builds adversarial inputs inside the L-infinity ball
of radius ``epsilon`` around ``x``: ``n_steps`` steps of
``step_size * sign(grad_x loss)``, each projected back into the ball and into
``[clip_min, clip_max]``, starting from a uniform random point of the ball
(PGD) or from ``x`` itself (FGSM, one step of size ``epsilon``). The attack
runs the network in inference mode (no dropout, no BatchNormalization update)
and takes gradients with respect to the inputs only, so it changes no weight
and leaves no ``.grad`` on them. The network then trains on

    (1 - adv_ratio) * loss(x) + adv_ratio * loss(x_adv)

with the compiled loss, sample weights included. Metrics: ``loss`` (that
objective in training, the clean loss in evaluation), the compiled metrics on
clean inputs, ``adv_loss`` (the compiled loss on adversarial inputs) and,
when the compiled metrics include an accuracy, ``adv_accuracy``. Evaluation
attacks the model in the same way, so ``val_adv_accuracy`` is the robust
accuracy under this attack.
"""

from __future__ import annotations

import keras
import pydantic
import torch
from pydantic import Field

import keras_steps
from keras_steps_plugins import _compiled

STEP = "adversarial"

#: Compiled metric names that make the step report ``adv_accuracy``, with the
#: accuracy each one means (None: Keras picks it from the label shape).
_ACCURACIES = {
    "accuracy": None,
    "acc": None,
    "sparse_categorical_accuracy": keras.metrics.sparse_categorical_accuracy,
    "categorical_accuracy": keras.metrics.categorical_accuracy,
    "binary_accuracy": keras.metrics.binary_accuracy,
}


class AdversarialOptions(keras_steps.StepOptions):
    """Options of the ``adversarial`` step."""

    epsilon: float = Field(
        0.03,
        gt=0,
        description=(
            "L-infinity radius of the attack, in input units (> 0); 0.03 is about "
            "8/255 for images scaled to [0, 1]."
        ),
    )
    step_size: float | None = Field(
        None,
        gt=0,
        description=(
            "Size of each sign-gradient step (> 0). None: epsilon for one step "
            "(FGSM), 2.5 * epsilon / n_steps for several (Madry et al.)."
        ),
    )
    n_steps: int = Field(
        1,
        ge=1,
        le=1000,
        description=(
            "Attack steps (>= 1): 1 is FGSM, more is PGD; each costs a forward "
            "and a backward pass."
        ),
    )
    random_start: bool | None = Field(
        None,
        description=(
            "Start the attack from a uniform random point of the ball. None: "
            "yes for PGD (n_steps > 1), no for FGSM."
        ),
    )
    adv_ratio: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Share of the training loss from adversarial inputs, in [0, 1]; 1 is "
            "pure adversarial training, 0 trains on clean inputs only but still "
            "measures the attack."
        ),
    )
    clip_min: float | None = Field(
        None, description="Lowest valid input value, or None for no lower bound."
    )
    clip_max: float | None = Field(
        None, description="Highest valid input value, or None for no upper bound."
    )
    seed: int | None = keras_steps.seed_field(
        None, "Seed of the random starts; None draws one from Keras's global seed."
    )

    @pydantic.model_validator(mode="after")
    def _clip_range(self):
        if (
            self.clip_min is not None
            and self.clip_max is not None
            and self.clip_min >= self.clip_max
        ):
            raise ValueError(
                f"clip_min ({self.clip_min}) must be below clip_max ({self.clip_max})"
            )
        return self


def attack_step_size(options: AdversarialOptions) -> float:
    """The step size in effect: ``options.step_size`` or its default."""
    if options.step_size is not None:
        return options.step_size
    if options.n_steps == 1:
        return options.epsilon
    return 2.5 * options.epsilon / options.n_steps


def attack_random_start(options: AdversarialOptions) -> bool:
    """Whether the attack starts at a random point of the ball."""
    if options.random_start is not None:
        return options.random_start
    return options.n_steps > 1


@keras_steps.hookimpl
def step_options():
    return AdversarialOptions


@keras_steps.hookimpl
def step_arguments():
    return {
        "y": "required",
        "loss": "required",
        "nested_x": keras_steps.Refused(
            "it perturbs the inputs, so x must be one floating-point tensor"
        ),
    }


@keras_steps.hookimpl
def step_build(options):
    return {
        "adv_loss": keras.metrics.Mean(name="adv_loss"),
        "adv_accuracy": keras.metrics.Mean(name="adv_accuracy"),
        "seed_generator": keras.random.SeedGenerator(
            options.seed, name="adversarial_seed"
        ),
    }


@keras_steps.hookimpl
def train_step(model, data, options):
    x, y, sample_weight = _compiled.unpack(data)
    x = _compiled.check_float_tensor(x, STEP, "perturbs")
    x_adv = attack(model, x, y, options)
    ratio = options.adv_ratio

    # A branch that carries no weight in the loss runs without a graph.
    with torch.set_grad_enabled(ratio < 1.0):
        y_pred = model(x, training=True)
        clean_loss = _compiled.compiled_loss(model, x, y, y_pred, sample_weight)
    with torch.set_grad_enabled(ratio > 0.0):
        adv_pred = model(x_adv, training=True)
        adv_loss = _compiled.compiled_loss(model, x_adv, y, adv_pred, sample_weight)
    if ratio == 0.0:
        loss = clean_loss
    elif ratio == 1.0:
        loss = adv_loss
    else:
        loss = (1.0 - ratio) * clean_loss + ratio * adv_loss
    _compiled.track_loss(model, loss, x)
    keras_steps.backprop(loss, model.optimizer, _compiled.trainable_variables(model))
    results = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    return _with_adversarial_metrics(model, results, x, y, adv_pred, adv_loss)


@keras_steps.hookimpl
def test_step(model, data, options):
    x, y, sample_weight = _compiled.unpack(data)
    x = _compiled.check_float_tensor(x, STEP, "perturbs")
    results = keras.Model.test_step(model, data)
    x_adv = attack(model, x, y, options)
    adv_pred = model(x_adv, training=False)
    adv_loss = _compiled.compiled_loss(
        model, x_adv, y, adv_pred, sample_weight, training=False
    )
    return _with_adversarial_metrics(model, results, x, y, adv_pred, adv_loss)


def attack(model, x, y, options: AdversarialOptions):
    """Adversarial inputs for ``model`` near ``x``: FGSM or PGD in the L-infinity ball.

    Usable on its own, for instance to measure a model trained another way.

    Args:
        model: a compiled :class:`~keras_steps.StepModel` with the ``adversarial``
            step (its seed generator draws the random starts).
        x: a batch of floating-point inputs.
        y: the matching targets, as the compiled loss takes them.
        options: the attack's settings (:class:`AdversarialOptions`).

    Returns:
        A tensor like ``x``, detached, within ``[clip_min, clip_max]`` and,
        where ``x`` itself lies in that range, within ``epsilon`` of ``x``.
    """
    # On Keras's device, where the model and the seed generator live.
    x = keras.ops.convert_to_tensor(x).detach()

    def project(candidate):
        # Into the ball, then into the valid range: the range wins when an
        # input already lies outside it.
        candidate = torch.clamp(candidate, x - options.epsilon, x + options.epsilon)
        if options.clip_min is None and options.clip_max is None:
            return candidate
        return torch.clamp(candidate, options.clip_min, options.clip_max)

    if attack_random_start(options):
        # Per-example: under torchrun, this rank's rows of the global batch's.
        noise = keras_steps.batch_random(
            keras.random.uniform,
            tuple(x.shape),
            minval=-options.epsilon,
            maxval=options.epsilon,
            dtype=str(x.dtype).removeprefix("torch."),
            seed=model.step_state["seed_generator"],
        )
        x_adv = project(x + noise)
    else:
        x_adv = project(x)
    step_size = attack_step_size(options)
    # One function per attack step: under jit_compile, a graph break inside a
    # loop (the input gradient is one) makes torch.compile run the looping
    # frame eagerly, but the function it calls is compiled as a unit.
    for _ in range(options.n_steps):
        # A leaf made here, not inside _ascend: dynamo breaks the graph when a
        # compiled function returns a tensor it made require grad.
        x_adv = project(_ascend(model, x_adv.detach().requires_grad_(True), y, step_size))
    return x_adv.detach()


def _ascend(model, x_adv, y, step_size):
    """One signed-gradient step from ``x_adv`` (a leaf that requires grad), unprojected."""
    # evaluate() runs test_step under torch.no_grad(); the attack needs a graph.
    with torch.enable_grad():
        pred = model(x_adv, training=False)
        # Each example is attacked on its own, so sample weights (which only
        # rescale per-example gradients) are left out. The loss scale keeps
        # float16 input gradients from underflowing to a zero sign.
        loss = _compiled.compiled_loss(model, x_adv, y, pred, None, training=False)
        if model.optimizer is not None:
            loss = model.optimizer.scale_loss(loss)
        (grad,) = torch.autograd.grad(loss, [x_adv])
    return x_adv.detach() + step_size * grad.sign()


def _with_adversarial_metrics(model, results, x, y, adv_pred, adv_loss):
    state = model.step_state
    state["adv_loss"].update_state(
        adv_loss.detach(), sample_weight=_compiled.batch_size(x)
    )
    results = dict(results)
    results["adv_loss"] = state["adv_loss"].result()
    accuracy = _accuracy_fn(results, y, adv_pred)
    if accuracy is None:
        results.pop("adv_accuracy", None)
    else:
        state["adv_accuracy"].update_state(accuracy(y, adv_pred.detach()))
        results["adv_accuracy"] = state["adv_accuracy"].result()
    return results


def _accuracy_fn(results, y, y_pred):
    """The accuracy among the compiled metrics, as a per-example function, or None."""
    if not (torch.is_tensor(y) and torch.is_tensor(y_pred)):
        return None
    for name, fn in _ACCURACIES.items():
        if name in results:
            if fn is not None:
                return fn
            # Keras's own rule for "accuracy" (trainers/compile_utils.py).
            if y_pred.shape[-1] == 1:
                return keras.metrics.binary_accuracy
            if y.ndim < y_pred.ndim or (y.shape[-1] == 1 and y_pred.shape[-1] > 1):
                return keras.metrics.sparse_categorical_accuracy
            return keras.metrics.categorical_accuracy
    return None


@keras_steps.hookimpl
def step_demo(out_dir, epochs, steps):
    """PGD vs plain training of an MLP on 8x8 digits: clean and robust accuracy."""
    from keras_steps_plugins import _compare

    attack_options = {
        "epsilon": 0.2,
        "n_steps": 5,
        "clip_min": 0.0,
        "clip_max": 1.0,
        "seed": 0,
    }
    return _compare.digits_comparison(
        {
            "plain": (STEP, {**attack_options, "adv_ratio": 0.0}),
            "adversarial": (STEP, {**attack_options, "adv_ratio": 0.5}),
        },
        out_dir / "adversarial_accuracy.png",
        title="8x8 digits: accuracy on clean and PGD inputs (epsilon=0.2)",
        keys=("val_accuracy", "val_adv_accuracy"),
        epochs=epochs or 20,
        steps=steps,
    )
