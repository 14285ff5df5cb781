"""Variational autoencoder (Kingma & Welling 2014): reconstruction plus KL loss.

Wraps an encoder and a decoder::

    vae = keras_steps.StepModel(
        models={"encoder": encoder, "decoder": decoder},
        step="vae",
        step_options={"kl_weight": 1.0, "reconstruction": "bce", "seed": 0},
    )
    vae.compile(optimizer="adam")
    vae.fit(images, epochs=10, batch_size=128)
    reconstructions = vae.predict(images)

The encoder contract: ``encoder(x)`` returns ``(z_mean, z_log_var)``, two
tensors of the same shape ``(batch, *latent)`` (a list, a tuple, or a dict
with those two keys), the mean and log-variance of the diagonal Gaussian
``q(z|x)``. It does not sample: the step draws ``z = z_mean + exp(z_log_var /
2) * eps`` itself (the reparameterisation trick) from a
``keras.random.SeedGenerator`` seeded by the ``seed`` option. ``decoder(z)``
returns the reconstruction, shaped like the target.

Per example, the reconstruction loss is summed over every non-batch axis
(``reconstruction_reduction="sum"``, the Gaussian/Bernoulli log-likelihood
and the Keras VAE example's choice) or averaged over them (``"mean"``), and
the KL divergence ``-0.5 * sum(1 + z_log_var - z_mean**2 - exp(z_log_var))``
is summed over the latent axes. Each is then averaged over the batch, with
``sample_weight`` weighting examples as Keras's losses do. The loss is
``reconstruction_loss + kl_weight * kl_loss`` plus any regularization losses
of the two networks. Losses are computed in float32, so mixed precision
policies work.

``fit(x)`` reconstructs ``x``; ``fit(x, y)`` reconstructs ``y`` from ``x``
(a denoising VAE). ``evaluate()`` reports the same metrics, drawing ``z`` as
training does so that ``val_loss`` estimates the same negative ELBO as
``loss``. ``model(x)`` and ``predict(x)`` are deterministic:
``decoder(z_mean)``, passed through a sigmoid when ``from_logits`` is set,
so they always return reconstructions in data space. To sample new data,
call the decoder on standard normal noise.
"""

from __future__ import annotations

from typing import Literal

import keras
from keras import ops
from pydantic import Field, model_validator

import keras_steps
from keras_steps import StepError

from ._batch_losses import (
    additional_losses,
    per_example_weights,
    reduce_per_example,
)

NAME = "vae"
ENCODER, DECODER = "encoder", "decoder"
#: The single optimizer updates every trainable weight: encoder and decoder.
OPTIMIZER = "model"


class VAEOptions(keras_steps.StepOptions):
    """Options of the ``vae`` step."""

    kl_weight: float = Field(
        1.0,
        ge=0.0,
        description="Weight of the KL term (the beta of a beta-VAE); 1 gives the "
        "negative ELBO. May be changed between batches (KL warm-up) by assigning "
        "model.step_options.kl_weight in a callback.",
    )
    reconstruction: Literal["bce", "mse"] = Field(
        "bce",
        description="Reconstruction loss per element: 'bce' (binary cross-entropy, "
        "targets in [0, 1]) or 'mse' (squared error).",
    )
    reconstruction_reduction: Literal["sum", "mean"] = Field(
        "sum",
        description="How each example's reconstruction loss is reduced over its "
        "elements (pixels): 'sum' (the log-likelihood, as the Keras VAE example) "
        "or 'mean' (weighs the KL term far more).",
    )
    from_logits: bool = Field(
        False,
        description="With reconstruction='bce': the decoder outputs logits (no "
        "sigmoid); predict() then applies the sigmoid.",
    )
    seed: int | None = keras_steps.seed_field(
        None,
        "Seed of the noise of the reparameterisation trick; None draws one from "
        "Keras's global seed (keras.utils.set_random_seed).",
    )

    @model_validator(mode="after")
    def _logits_need_bce(self):
        if self.from_logits and self.reconstruction != "bce":
            raise ValueError(
                "from_logits=True needs reconstruction='bce'; with "
                f"reconstruction={self.reconstruction!r} the decoder outputs the "
                "reconstruction itself"
            )
        return self


@keras_steps.hookimpl
def step_options():
    return VAEOptions


@keras_steps.hookimpl
def step_model_roles():
    return (ENCODER, DECODER)


@keras_steps.hookimpl
def step_optimizer_roles():
    return (OPTIMIZER,)


_OWN_LOSS = (
    "it computes its own loss, reconstruction_loss + kl_weight * kl_loss (options "
    "reconstruction, reconstruction_reduction, kl_weight)"
)


@keras_steps.hookimpl
def step_arguments():
    return {
        "y": "defaults_to_x",
        "loss": keras_steps.Refused(_OWN_LOSS),
        "loss_weights": keras_steps.Refused(_OWN_LOSS),
        "class_weight": keras_steps.Refused(
            "it reconstructs its targets, which have no classes; weight examples with "
            "sample_weight"
        ),
    }


@keras_steps.hookimpl
def step_build(options):
    return {
        # Named "loss", this tracker replaces the compile() loss tracker.
        "loss": keras.metrics.Mean(name="loss"),
        "reconstruction_loss": keras.metrics.Mean(name="reconstruction_loss"),
        "kl_loss": keras.metrics.Mean(name="kl_loss"),
        "seed_generator": keras.random.SeedGenerator(options.seed, name="vae_seed"),
    }


@keras_steps.hookimpl
def step_call(model, inputs, training, options):
    z_mean, _ = _encode(model, inputs, training)
    output = model.models[DECODER](z_mean, training=training)
    return ops.sigmoid(output) if options.from_logits else output


@keras_steps.hookimpl
def train_step(model, data, options):
    x, target, reconstruction, sample_weight, losses = _losses(
        model, data, options, True
    )
    keras_steps.backprop(
        losses["loss"], model.optimizers[OPTIMIZER], model.trainable_weights
    )
    return _metrics(model, x, target, reconstruction, sample_weight, losses)


@keras_steps.hookimpl
def test_step(model, data, options):
    x, target, reconstruction, sample_weight, losses = _losses(
        model, data, options, False
    )
    return _metrics(model, x, target, reconstruction, sample_weight, losses)


def _losses(model, data, options, training):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    target = x if y is None else y
    if isinstance(target, (dict, list, tuple)):
        raise StepError(
            f"Step {NAME!r} reconstructs x when no y is given, so x must be one "
            f"tensor; got a {type(target).__name__}. Pass the target as y: fit(x, y)."
        )
    target = ops.convert_to_tensor(target)
    z_mean, z_log_var = _encode(model, x, training)
    batch_size = z_mean.shape[0]
    # Per-example noise: under torchrun, this rank's rows of the global batch's.
    eps = keras_steps.batch_random(
        keras.random.normal, ops.shape(z_mean), seed=model.step_state["seed_generator"]
    )
    z = z_mean + ops.exp(0.5 * z_log_var) * eps
    output = model.models[DECODER](z, training=training)
    if not ops.is_tensor(output) or tuple(output.shape) != tuple(target.shape):
        raise StepError(
            f"Step {NAME!r}: the decoder returned {_describe(output)} but the "
            f"reconstruction target ({'x' if y is None else 'y'}) has shape "
            f"{tuple(target.shape)}; the decoder must return one tensor of the "
            "target's shape."
        )
    target = ops.cast(target, "float32")
    output = ops.cast(output, "float32")
    if options.reconstruction == "bce":
        per_element = ops.binary_crossentropy(
            target, output, from_logits=options.from_logits
        )
    else:
        per_element = ops.square(target - output)
    per_element = ops.reshape(per_element, (batch_size, -1))
    reduce = ops.sum if options.reconstruction_reduction == "sum" else ops.mean
    recon_per_example = reduce(per_element, axis=1)
    kl_per_element = -0.5 * (1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
    kl_per_example = ops.sum(ops.reshape(kl_per_element, (batch_size, -1)), axis=1)

    weights = per_example_weights(NAME, sample_weight, batch_size)
    recon = reduce_per_example(recon_per_example, weights)
    kl = reduce_per_example(kl_per_example, weights)
    total = recon + options.kl_weight * kl + additional_losses(model)
    if options.from_logits:
        output = ops.sigmoid(output)
    losses = {"loss": total, "reconstruction_loss": recon, "kl_loss": kl}
    return x, target, output, sample_weight, losses


def _metrics(model, x, target, reconstruction, sample_weight, losses):
    batch_size = reconstruction.shape[0]
    for name in ("loss", "reconstruction_loss", "kl_loss"):
        model.step_state[name].update_state(losses[name], sample_weight=batch_size)
    # Compiled metrics (compile(metrics=["mse"]), say) compare the target
    # with the reconstruction from the sampled z.
    return model.compute_metrics(x, target, reconstruction, sample_weight=sample_weight)


def _encode(model, x, training):
    """Run the encoder and check its ``(z_mean, z_log_var)`` contract."""
    out = model.models[ENCODER](x, training=training)
    if isinstance(out, dict) and set(out) == {"z_mean", "z_log_var"}:
        out = (out["z_mean"], out["z_log_var"])
    ok = (
        isinstance(out, (list, tuple))
        and len(out) == 2
        and all(ops.is_tensor(t) for t in out)
    )
    if not ok:
        hint = ""
        if isinstance(out, (list, tuple)) and len(out) == 3:
            hint = (
                " An encoder that also samples z (like the Keras VAE example's "
                "[z_mean, z_log_var, z]) must drop the sampling: the step draws z "
                "itself."
            )
        raise StepError(
            f"Step {NAME!r}: the encoder must return (z_mean, z_log_var), two tensors "
            f"of the same shape (or a dict with those keys); it returned "
            f"{_describe(out)}.{hint}"
        )
    z_mean, z_log_var = out
    if tuple(z_mean.shape) != tuple(z_log_var.shape):
        raise StepError(
            f"Step {NAME!r}: the encoder's z_mean and z_log_var must have the same "
            f"shape; got {tuple(z_mean.shape)} and {tuple(z_log_var.shape)}."
        )
    return ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")


def _describe(value) -> str:
    if ops.is_tensor(value) or isinstance(value, keras.KerasTensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_describe(v) for v in value)
        return f"a {type(value).__name__} of {len(value)}: [{inner}]"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value, key=str)}"
    return f"a {type(value).__name__}"


@keras_steps.hookimpl
def step_demo(out_dir, epochs, steps):
    """A dense VAE with an 8-d latent on 28x28 digits: reconstructions and samples."""
    import numpy as np

    from keras_steps import StepModel

    from ._demo import load_digits, save_curves, save_image_grid

    keras.utils.set_random_seed(1337)
    images, labels = load_digits(28)
    order = np.random.default_rng(0).permutation(len(images))
    train, held_out = order[:1500], order[1500:]
    latent_dim = 8
    encoder, decoder = _demo_networks(latent_dim)
    vae = StepModel(
        models={"encoder": encoder, "decoder": decoder},
        step=NAME,
        step_options={"seed": 0},
    )
    vae.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = vae.fit(
        images[train],
        epochs=epochs or _DEMO_EPOCHS,
        steps_per_epoch=steps,
        batch_size=64,
        validation_data=(images[held_out],),
        verbose="auto",
    )
    # Two held-out examples of each digit, originals above reconstructions.
    picks = [held_out[labels[held_out] == d][:2] for d in range(10)]
    rows = [np.array([p[i] for p in picks]) for i in range(2)]
    grid = []
    for row in rows:
        grid += [images[row], vae.predict(images[row], verbose=0)]
    files = {
        "reconstructions": save_image_grid(
            np.concatenate(grid),
            out_dir / "reconstructions.png",
            columns=10,
            title="held-out digits (rows 1, 3) and their reconstructions (rows 2, 4)",
        ),
    }
    noise = keras.random.normal((20, latent_dim), seed=0)
    samples = keras.ops.convert_to_numpy(decoder(noise, training=False))
    files["samples"] = save_image_grid(
        samples, out_dir / "samples.png", columns=10, title="decoder(z), z ~ N(0, I)"
    )
    files["curves"] = save_curves(
        history.history,
        out_dir / "curves.png",
        keys=["loss", "val_loss", "reconstruction_loss", "kl_loss"],
        title="VAE on digits: negative ELBO and its parts",
    )
    return files


_DEMO_EPOCHS = 40


def _demo_networks(latent_dim):
    # Dense layers rather than the Keras example's convolutions: several
    # times faster on a CPU, and enough for 28x28 digits.
    layers = keras.layers
    inputs = keras.Input((28, 28, 1))
    h = layers.Dense(256, activation="relu")(layers.Flatten()(inputs))
    h = layers.Dense(128, activation="relu")(h)
    encoder = keras.Model(
        inputs,
        [layers.Dense(latent_dim)(h), layers.Dense(latent_dim)(h)],
        name="encoder",
    )
    z = keras.Input((latent_dim,))
    h = layers.Dense(128, activation="relu")(z)
    h = layers.Dense(256, activation="relu")(h)
    h = layers.Dense(28 * 28, activation="sigmoid")(h)
    return encoder, keras.Model(z, layers.Reshape((28, 28, 1))(h), name="decoder")
