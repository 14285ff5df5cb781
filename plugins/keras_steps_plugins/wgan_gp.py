"""Wasserstein GAN with gradient penalty: several critic updates per generator update.

Gulrajani et al. 2017, "Improved Training of Wasserstein GANs"
(arXiv:1704.00028), Algorithm 1. The critic minimises
``mean(C(fake)) - mean(C(real)) + gp_weight * mean((||grad_x C(x_hat)||_2 - 1)^2)``
with ``x_hat`` drawn uniformly on lines between real and generated samples;
the penalty's gradient comes from a double backward. The generator then
minimises ``-mean(C(G(z)))``.

Usage::

    wgan = keras_steps.StepModel(
        models={"generator": generator, "critic": critic},
        step="wgan-gp",
        step_options={"latent_dim": 128, "d_steps": 5, "gp_weight": 10.0},
    )
    wgan.compile(optimizer={
        "generator": keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.9),
        "critic": keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.9),
    })
    wgan.fit(images, batch_size=64, epochs=1)
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

_METRICS = ("d_loss", "g_loss", "gp", "wasserstein")


class WGANGPOptions(keras_steps.StepOptions):
    """Options of the ``wgan-gp`` step."""

    latent_dim: int = Field(
        128, gt=0, le=MAX_LATENT_DIM, description=LATENT_DIM_DESCRIPTION
    )
    d_steps: int = Field(
        5,
        ge=1,
        le=100,
        description="Critic updates per generator update, on the same real batch.",
    )
    gp_weight: float = Field(
        10.0, ge=0.0, description="Weight of the gradient penalty (the paper's lambda)."
    )
    seed: int = keras_steps.seed_field(
        1337, "Seed of the step's random stream (latents, interpolation points)."
    )


@keras_steps.hookimpl
def step_options():
    return WGANGPOptions


@keras_steps.hookimpl
def step_model_roles():
    return ("generator", "critic")


@keras_steps.hookimpl
def step_optimizer_roles():
    return ("generator", "critic")


_NO_TARGETS = "the critic scores real images (fit(images)) against generated ones"
_OWN_LOSSES = (
    "the step computes the Wasserstein losses with gradient penalty and reports "
    "d_loss, g_loss, gp and wasserstein"
)


@keras_steps.hookimpl
def step_arguments():
    return {
        "y": keras_steps.Refused(_NO_TARGETS + "; it takes no targets"),
        "sample_weight": keras_steps.Refused(
            "the Wasserstein estimate averages real and generated images alike, and "
            "generated ones have no weights"
        ),
        "class_weight": keras_steps.Refused(_NO_TARGETS + "; there are no classes"),
        "nested_x": keras_steps.Refused("x must be one tensor of real images"),
        "loss": keras_steps.Refused(_OWN_LOSSES),
        "loss_weights": keras_steps.Refused(_OWN_LOSSES),
        "metrics": keras_steps.Refused(_OWN_LOSSES),
        "weighted_metrics": keras_steps.Refused(_OWN_LOSSES),
    }


@keras_steps.hookimpl
def step_build(model, options):
    build_networks(model, "wgan-gp", options.latent_dim, "critic")
    state = {name: keras.metrics.Mean(name=name) for name in _METRICS}
    state.update(seed_generators(options.seed, "wgan_gp"))
    return state


@keras_steps.hookimpl
def step_call(model, inputs, training):
    return model.models["generator"](inputs, training=training)


# Eager even under compile(jit_compile=True): the critic's update differentiates
# the penalty's gradient again, and AOTAutograd cannot take the double
# backward of a compiled graph. The rest of the step compiles around it.
@torch.compiler.disable
def gradient_penalty(critic, real, fake, alpha, create_graph=True, training=True):
    """``mean((||grad C(x_hat)|| - 1)^2)`` on ``x_hat = alpha*real + (1-alpha)*fake``.

    Args:
        critic: the critic network.
        real: a batch of real samples.
        fake: a batch of generated samples, detached from the generator.
        alpha: per-sample mixing weights in [0, 1], broadcastable to ``real``.
        create_graph: keep the graph of the gradient, so that the penalty can
            itself be differentiated with respect to the critic's weights (the
            double backward); ``False`` only to measure it.
        training: the critic's training flag.

    Returns:
        The penalty, a scalar tensor.
    """
    interpolates = (alpha * real + (1.0 - alpha) * fake).detach().requires_grad_(True)
    scores = critic(interpolates, training=training)
    (grads,) = torch.autograd.grad(
        scores.sum(), interpolates, create_graph=create_graph
    )
    # In float32: under mixed precision the squared gradient norm is what
    # overflows first.
    norms = torch.linalg.vector_norm(grads.flatten(1).float(), dim=1)
    return torch.mean((norms - 1.0) ** 2)


def _alpha(real, seed):
    shape = (real.shape[0],) + (1,) * (len(real.shape) - 1)
    return keras_steps.batch_random(
        keras.random.uniform, shape, seed=seed, dtype=real.dtype
    )


def _mean(x):
    return keras.ops.mean(keras.ops.cast(x, "float32"))


def _wasserstein(critic, real, fake, training):
    """``mean(C(real)) - mean(C(fake))`` from one critic call, and ``mean(C(fake))``."""
    scores = critic(keras.ops.concatenate([real, fake], axis=0), training=training)
    fake_score = _mean(scores[real.shape[0] :])
    return _mean(scores[: real.shape[0]]) - fake_score, fake_score


@keras_steps.hookimpl
def train_step(model, data, options):
    generator = model.models["generator"]
    critic = model.models["critic"]
    state = model.step_state
    seed = state["seed_generator"]
    real = real_batch(data)
    batch_size = real.shape[0]

    for _ in range(options.d_steps):
        latents = draw_latents(batch_size, options.latent_dim, seed)
        with torch.no_grad():
            fake = generator(latents, training=True)
        fake = keras.ops.cast(fake, real.dtype)
        wasserstein, _ = _wasserstein(critic, real, fake, training=True)
        gp = gradient_penalty(critic, real, fake, _alpha(real, seed))
        d_loss = -wasserstein + options.gp_weight * gp
        # backward() on d_loss runs through the penalty's gradient graph too:
        # that second-order term is what pushes the critic's slope toward 1.
        keras_steps.backprop(
            d_loss, model.optimizers["critic"], critic.trainable_weights
        )
        state["d_loss"].update_state(d_loss)
        state["gp"].update_state(gp)
        state["wasserstein"].update_state(wasserstein)

    latents = draw_latents(batch_size, options.latent_dim, seed)
    g_loss = -_mean(critic(generator(latents, training=True), training=True))
    keras_steps.backprop(
        g_loss, model.optimizers["generator"], generator.trainable_weights
    )
    state["g_loss"].update_state(g_loss)
    return {name: state[name].result() for name in _METRICS}


@keras_steps.hookimpl
def test_step(model, data, options):
    """The critic's loss, penalty included, and the generator's loss."""
    generator = model.models["generator"]
    critic = model.models["critic"]
    state = model.step_state
    eval_seed = rewind_at_evaluation_start(state, "d_loss", options.seed)
    real = real_batch(data)
    latents = draw_latents(real.shape[0], options.latent_dim, eval_seed)
    fake = keras.ops.cast(generator(latents, training=False), real.dtype)
    wasserstein, fake_score = _wasserstein(critic, real, fake, training=False)
    # evaluate() runs under no_grad; the penalty is a gradient, so it needs
    # autograd back for this one first-order computation.
    with torch.enable_grad():
        gp = gradient_penalty(
            critic,
            real,
            fake,
            _alpha(real, eval_seed),
            create_graph=False,
            training=False,
        )
    state["d_loss"].update_state(-wasserstein + options.gp_weight * gp)
    state["g_loss"].update_state(-fake_score)
    state["gp"].update_state(gp)
    state["wasserstein"].update_state(wasserstein)
    return {name: state[name].result() for name in _METRICS}


def demo_networks(latent_dim=64):
    """A small convolutional generator and critic for 28x28x1 images.

    The critic has no batch normalization: the penalty is per sample, and
    batch statistics would couple the samples (the paper uses none either).

    Returns:
        ``(generator, critic)``, two ``keras.Sequential`` models.
    """
    layers = keras.layers
    generator = keras.Sequential(
        [
            keras.Input(shape=(latent_dim,)),
            layers.Dense(7 * 7 * 64),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Reshape((7, 7, 64)),
            layers.Conv2DTranspose(64, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2DTranspose(32, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(1, (5, 5), padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
    critic = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(64, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Flatten(),
            layers.Dense(1),
        ],
        name="critic",
    )
    return generator, critic


@keras_steps.hookimpl
def step_demo(out_dir, epochs, steps):
    """Small conv networks on scikit-learn's digits, resized to 28x28."""

    def models():
        generator, critic = demo_networks(latent_dim=64)
        return {"generator": generator, "critic": critic}

    def optimizer():
        # The paper's Adam(1e-4, beta_1=0, beta_2=0.9), with a larger step to
        # fit a CPU-minute budget.
        return keras.optimizers.Adam(learning_rate=5e-4, beta_1=0.5, beta_2=0.9)

    # 6 epochs of 29 batches, 5 critic updates each: about 50 seconds on one
    # idle CPU core.
    return digits_demo(
        "wgan-gp",
        models,
        64,
        optimizer,
        out_dir,
        epochs or 6,
        steps,
        ["d_loss", "g_loss", "wasserstein"],
    )
