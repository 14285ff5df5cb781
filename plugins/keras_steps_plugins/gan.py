"""The seed guide's GAN: discriminator on noisy-labelled images, then the generator.

Goodfellow et al. 2014, "Generative Adversarial Networks", written as the
Keras guide "Customizing what happens in fit() with PyTorch" writes it. Each
batch of real images gives ``d_steps`` discriminator updates (generated images
labelled 1, real ones 0, plus uniform label noise) and then one generator
update through the discriminator, with labels that say "real". With the same
seed, networks, optimizers and data, the losses are the guide's ``GAN``
class's to float tolerance; see the docs' ``gan`` step page for what differs.

Usage::

    gan = keras_steps.StepModel(
        models={"generator": generator, "discriminator": discriminator},
        step="gan",
        step_options={"latent_dim": 128},
    )
    gan.compile(optimizer={"generator": keras.optimizers.Adam(3e-4),
                           "discriminator": keras.optimizers.Adam(3e-4)})
    gan.fit(images, batch_size=64, epochs=1)
    samples = gan.predict(latents)  # generated images

``compile(loss=...)`` replaces the adversarial loss of both networks (default
``BinaryCrossentropy(from_logits=True)``, the seed's ``loss_fn``); a
discriminator ending in a sigmoid takes ``BinaryCrossentropy()`` with
``label_noise=0``. ``y``, weights, metrics and nested inputs are refused
(``step_arguments``).
"""

from __future__ import annotations

import keras
import torch
from pydantic import Field

import keras_steps
from keras_steps_plugins._gan_common import (
    LATENT_DIM_DESCRIPTION,
    MAX_LATENT_DIM,
    build_networks,
    digits_demo,
    draw_latents,
    real_batch,
    rewind_at_evaluation_start,
    seed_generators,
)


class GANOptions(keras_steps.StepOptions):
    """Options of the ``gan`` step."""

    latent_dim: int = Field(
        128, gt=0, le=MAX_LATENT_DIM, description=LATENT_DIM_DESCRIPTION
    )
    label_noise: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description=(
            "Scale of the uniform noise added to the discriminator's labels "
            "(labels become 1 + U(0, noise) for fakes, U(0, noise) for reals)."
        ),
    )
    d_steps: int = Field(
        1,
        ge=1,
        le=100,
        description="Discriminator updates per generator update (same real batch).",
    )
    seed: int = keras_steps.seed_field(
        1337, "Seed of the step's random stream (latents and label noise)."
    )


#: The seed guide's loss, used when compile() is given none.
_bce = keras.losses.BinaryCrossentropy(from_logits=True)


def adversarial_loss(model, options):
    """The loss comparing the discriminator's outputs with real/fake labels.

    ``compile(loss=...)`` when given (``BinaryCrossentropy()`` for a
    discriminator ending in a sigmoid), else binary cross-entropy on logits,
    as the seed guide.

    Raises:
        StepError: a cross-entropy on probabilities with ``label_noise > 0``,
            whose noisy labels (up to ``1 + label_noise``) torch refuses.
    """
    if model.loss is None:
        return _bce
    loss = keras.losses.get(model.loss)
    if options.label_noise > 0 and _on_probabilities(loss):
        raise keras_steps.StepError(
            f"Step 'gan': compile(loss={model.loss!r}) is a binary cross-entropy on "
            "probabilities, which takes labels in [0, 1] on the torch backend, but "
            f"label_noise={options.label_noise} makes the generated images' labels up "
            f"to {1 + options.label_noise}. Set step_options label_noise=0, or let the "
            "discriminator output logits with BinaryCrossentropy(from_logits=True)."
        )
    if isinstance(loss, keras.losses.Loss):
        return loss
    # A loss function, per example: averaged over the batch, as Keras's
    # losses reduce ("sum_over_batch_size").
    return lambda labels, predictions: keras.ops.mean(loss(labels, predictions))


def _on_probabilities(loss):
    if isinstance(loss, keras.losses.BinaryCrossentropy):
        return not loss.get_config()["from_logits"]
    return loss is keras.losses.binary_crossentropy


@keras_steps.hookimpl
def step_options():
    return GANOptions


@keras_steps.hookimpl
def step_model_roles():
    return ("generator", "discriminator")


@keras_steps.hookimpl
def step_optimizer_roles():
    return ("generator", "discriminator")


_NOT_TAKEN = "the step trains on real images alone (fit(images)) and makes the labels"


@keras_steps.hookimpl
def step_arguments():
    return {
        "loss": "own",
        "y": keras_steps.Refused(_NOT_TAKEN + " itself: 1 for generated, 0 for real"),
        "sample_weight": keras_steps.Refused(
            "the discriminator's loss averages real and generated images alike, and "
            "generated ones have no weights"
        ),
        "class_weight": keras_steps.Refused(_NOT_TAKEN + "; there are no classes"),
        "nested_x": keras_steps.Refused("x must be one tensor of real images"),
        "loss_weights": keras_steps.Refused("the step has one loss per network"),
        "metrics": keras_steps.Refused(
            "the step reports d_loss and g_loss; compiled metrics have no targets here"
        ),
        "weighted_metrics": keras_steps.Refused("the step reports d_loss and g_loss"),
    }


@keras_steps.hookimpl
def step_build(model, options):
    build_networks(model, "gan", options.latent_dim, "discriminator")
    return {
        "d_loss": keras.metrics.Mean(name="d_loss"),
        "g_loss": keras.metrics.Mean(name="g_loss"),
        **seed_generators(options.seed, "gan"),
    }


@keras_steps.hookimpl
def step_call(model, inputs, training):
    return model.models["generator"](inputs, training=training)


def _labels(batch_size):
    """1 for the generated half of a batch, 0 for the real half, as in the seed."""
    ones = keras.ops.ones((batch_size, 1))
    zeros = keras.ops.zeros((batch_size, 1))
    return keras.ops.concatenate([ones, zeros], axis=0)


@keras_steps.hookimpl
def train_step(model, data, options):
    state = model.step_state
    real = real_batch(data)
    # Each update is a function of its own: under jit_compile, a graph break
    # (every backward is one) inside a loop makes torch.compile run the whole
    # looping frame eagerly, but the function it calls is compiled as a unit.
    for _ in range(options.d_steps):
        state["d_loss"].update_state(_discriminator_update(model, real, options))
    state["g_loss"].update_state(_generator_update(model, real.shape[0], options))
    return {"d_loss": state["d_loss"].result(), "g_loss": state["g_loss"].result()}


def _discriminator_update(model, real, options):
    generator = model.models["generator"]
    discriminator = model.models["discriminator"]
    seed = model.step_state["seed_generator"]
    batch_size = real.shape[0]
    latents = draw_latents(batch_size, options.latent_dim, seed)
    # The discriminator's loss must not reach the generator: the seed
    # back-propagated it there and threw the gradients away.
    with torch.no_grad():
        fake = generator(latents, training=True)
    combined = keras.ops.concatenate([fake, real], axis=0)
    labels = _labels(batch_size)
    # One draw for the stacked [fakes; reals] labels, as in the seed: two
    # per-example blocks, so that each rank gets its rows of both.
    labels = labels + options.label_noise * keras_steps.batch_random(
        keras.random.uniform, labels.shape, seed=seed, blocks=2
    )
    d_loss = adversarial_loss(model, options)(labels, discriminator(combined, training=True))
    keras_steps.backprop(
        d_loss, model.optimizers["discriminator"], discriminator.trainable_weights
    )
    return d_loss


def _generator_update(model, batch_size, options):
    generator = model.models["generator"]
    discriminator = model.models["discriminator"]
    latents = draw_latents(batch_size, options.latent_dim, model.step_state["seed_generator"])
    misleading_labels = keras.ops.zeros((batch_size, 1))
    predictions = discriminator(generator(latents, training=True), training=True)
    g_loss = adversarial_loss(model, options)(misleading_labels, predictions)
    # Gradients for the generator's weights only: the discriminator is frozen
    # here, and backprop computes nothing for it.
    keras_steps.backprop(
        g_loss, model.optimizers["generator"], generator.trainable_weights
    )
    return g_loss


@keras_steps.hookimpl
def test_step(model, data, options):
    """Both losses on clean labels, with latents that restart at each evaluation."""
    generator = model.models["generator"]
    discriminator = model.models["discriminator"]
    state = model.step_state
    eval_seed = rewind_at_evaluation_start(state, "d_loss", options.seed)
    real = real_batch(data)
    batch_size = real.shape[0]
    latents = draw_latents(batch_size, options.latent_dim, eval_seed)
    fake = generator(latents, training=False)
    predictions = discriminator(
        keras.ops.concatenate([fake, real], axis=0), training=False
    )
    loss = adversarial_loss(model, options)
    d_loss = loss(_labels(batch_size), predictions)
    g_loss = loss(keras.ops.zeros((batch_size, 1)), predictions[:batch_size])
    state["d_loss"].update_state(d_loss)
    state["g_loss"].update_state(g_loss)
    return {"d_loss": state["d_loss"].result(), "g_loss": state["g_loss"].result()}


def seed_networks(latent_dim=128):
    """The seed guide's generator and discriminator, for 28x28x1 images.

    Args:
        latent_dim: size of the generator's input.

    Returns:
        ``(generator, discriminator)``, two ``keras.Sequential`` models.
    """
    layers = keras.layers
    discriminator = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(64, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(128, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.GlobalMaxPooling2D(),
            layers.Dense(1),
        ],
        name="discriminator",
    )
    generator = keras.Sequential(
        [
            keras.Input(shape=(latent_dim,)),
            layers.Dense(7 * 7 * 128),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Reshape((7, 7, 128)),
            layers.Conv2DTranspose(128, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2DTranspose(128, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(1, (7, 7), padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
    return generator, discriminator


@keras_steps.hookimpl
def step_demo(out_dir, epochs, steps):
    """The seed's networks on scikit-learn's digits, resized to 28x28."""

    def models():
        generator, discriminator = seed_networks(latent_dim=128)
        return {"generator": generator, "discriminator": discriminator}

    def optimizer():
        # The guide's Adam(3e-4) still draws striped, checkered shapes after
        # this budget; a larger step with less momentum, as in DCGAN, draws
        # digits.
        return keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.5)

    # 8 epochs of 29 batches: about 2 minutes on one idle CPU core.
    return digits_demo(
        "gan", models, 128, optimizer, out_dir, epochs or 8, steps, ["d_loss", "g_loss"]
    )
