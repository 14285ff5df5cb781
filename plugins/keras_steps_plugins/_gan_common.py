"""What the ``gan`` and ``wgan-gp`` steps share: random streams and real batches."""

from __future__ import annotations

import re

import keras

import keras_steps

__all__ = [
    "LATENT_DIM_DESCRIPTION",
    "MAX_LATENT_DIM",
    "MAX_SEED",
    "build_networks",
    "draw_latents",
    "real_batch",
    "rewind_at_evaluation_start",
    "seed_generators",
]

MAX_SEED = keras_steps.MAX_SEED

#: The largest latent_dim: far above any published GAN's (100 to 512), and
#: low enough that a typo (2**40) is refused instead of failing to allocate.
MAX_LATENT_DIM = 65536
LATENT_DIM_DESCRIPTION = (
    f"Size of the latent vectors fed to the generator, 1 to {MAX_LATENT_DIM}."
)

# The evaluation stream starts this far from the training stream, so their
# seeds never coincide: each draw advances a stream's seed by one.
_EVAL_SEED_OFFSET = 2**30


def _eval_seed(seed: int) -> int:
    return (seed + _EVAL_SEED_OFFSET) % (MAX_SEED + 1)


def seed_generators(seed: int, prefix: str) -> dict:
    """The training and evaluation streams, for a ``step_build`` dict.

    Returns:
        ``{"seed_generator": ..., "eval_seed_generator": ...}``; being in the
        step state, both are saved with the model.
    """
    return {
        "seed_generator": keras.random.SeedGenerator(seed, name=f"{prefix}_seed"),
        "eval_seed_generator": keras.random.SeedGenerator(
            _eval_seed(seed), name=f"{prefix}_eval_seed"
        ),
    }


def rewind_at_evaluation_start(state: dict, tracker: str, seed: int):
    """Restart the evaluation stream on the first batch of each evaluation.

    Keras resets metrics when an evaluation starts, so an empty ``tracker``
    marks its first batch. Rewinding there makes ``evaluate()`` of the same
    weights on the same data give the same numbers, and validation losses of
    different epochs comparable. The choice is made on device, without
    reading the count back to the host.

    Returns:
        The evaluation ``SeedGenerator``.
    """
    generator = state["eval_seed_generator"]
    start = keras.ops.convert_to_tensor(
        [_eval_seed(seed), 0], dtype=generator.state.dtype
    )
    first = keras.ops.equal(state[tracker].count, 0)
    generator.state.assign(keras.ops.where(first, start, generator.state.value))
    return generator


def draw_latents(batch_size, latent_dim, seed):
    """Standard normal latents for a batch, from ``seed``.

    Under ``torchrun``, this rank's rows of the global batch's latents
    (``keras_steps.batch_random``): W ranks with batch B draw what one
    process with batch W * B draws. On one process, the plain draw.
    """
    return keras_steps.batch_random(
        keras.random.normal, (batch_size, latent_dim), seed=seed
    )


def _build_on(network, shape):
    """Build an unbuilt ``network`` for inputs of ``shape`` (batch first, None)."""
    if not network.built and isinstance(network, keras.Sequential):
        # A call would pin the probe's batch size into the Sequential's
        # InputLayer and build config; build() leaves the batch free.
        network.build(shape)


def _probe(step, role, network, inputs, what):
    """Run ``network`` on ``inputs`` in inference mode; a StepError if it cannot."""
    try:
        return network(inputs, training=False)
    except Exception as exc:
        raise keras_steps.StepError(
            f"Step {step!r}: the {role} network cannot take {what} of shape "
            f"(batch, {', '.join(map(str, inputs.shape[1:]))}): "
            f"{type(exc).__name__}: {_keras_reason(exc)}"
        ) from exc


def _keras_reason(exc: Exception) -> str:
    """The line of a Keras layer-call error that says what is wrong."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered")]
    reason = next((line for line in lines if not line.startswith("Arguments received")), "")
    return reason or type(exc).__name__


def build_networks(model, step: str, latent_dim: int, judge: str) -> None:
    """Build unbuilt networks on what the step feeds them, and check built ones.

    The generator gets latents of shape ``(batch, latent_dim)``; the judge
    (discriminator or critic) gets the generator's outputs and must give one
    score per example. An unbuilt ``keras.Sequential`` is built with a free
    batch size; another unbuilt network is built by the same check call
    (two latents, ``training=False``, so no statistic moves). Without this,
    Keras would build the StepModel by calling it on a batch of *images*,
    and the generator would be built on the image shape.

    Raises:
        StepError: a network does not take those inputs, or the judge does
            not give one score per example; the message names the role and
            the shape.
    """
    generator, critic = model.models["generator"], model.models[judge]
    _build_on(generator, (None, latent_dim))
    latents = keras.ops.zeros((2, latent_dim))
    fake = _probe(
        step, "generator", generator, latents, f"latent vectors (option latent_dim={latent_dim})"
    )
    if not hasattr(fake, "shape") or len(fake.shape) < 2:
        raise keras_steps.StepError(
            f"Step {step!r}: the generator returned {type(fake).__name__} "
            f"{getattr(fake, 'shape', '')} for 2 latent vectors; it must return one "
            "batch of samples, shaped (batch, ...)."
        )
    _build_on(critic, (None, *fake.shape[1:]))
    scores = _probe(step, judge, critic, fake, "the generator's outputs")
    if not hasattr(scores, "shape") or tuple(scores.shape) not in ((2,), (2, 1)):
        raise keras_steps.StepError(
            f"Step {step!r}: the {judge} returned shape "
            f"{tuple(getattr(scores, 'shape', ()))} for 2 generated samples; it must "
            "return one score per example, shaped (batch, 1) or (batch,)."
        )


def real_batch(data):
    """The real samples of a batch: ``x`` of ``x``, ``(x,)`` or ``(x, y, ...)``."""
    if isinstance(data, (tuple, list)):
        data = data[0]
    return keras.ops.convert_to_tensor(data)


def digits_demo(
    step, make_models, latent_dim, make_optimizer, out_dir, epochs, steps, curves
):
    """Train a GAN-like step on the digits at 28x28 and draw what it makes.

    Args:
        step: the step name.
        make_models: returns the ``models`` dict; called after seeding, so
            the demo starts from the same weights every time.
        latent_dim: the generator's input size.
        make_optimizer: returns a fresh optimizer, one per role.
        out_dir, steps: as in the ``step_demo`` hook.
        epochs: as in the hook, already defaulted by the step.
        curves: the metrics to plot per epoch.

    Returns:
        ``{"samples": path, "curves": path}``.
    """
    import numpy as np

    from keras_steps_plugins import _demo

    keras.utils.set_random_seed(1337)
    images, _ = _demo.load_digits(28)
    models = make_models()
    model = keras_steps.StepModel(
        models=models, step=step, step_options={"latent_dim": latent_dim}
    )
    model.compile(optimizer={role: make_optimizer() for role in models})
    history = model.fit(
        images, batch_size=64, epochs=epochs, steps_per_epoch=steps, verbose="auto"
    )
    latents = np.random.default_rng(0).normal(size=(32, latent_dim))
    samples = model.predict(latents.astype("float32"), verbose=0)
    return {
        "samples": _demo.save_image_grid(
            samples, out_dir / "samples.png", title=f"{step}: generated digits"
        ),
        "curves": _demo.save_curves(
            history.history,
            out_dir / "curves.png",
            keys=curves,
            title=f"{step}: losses per epoch",
        ),
    }
