"""Models, data and training runs shared by the saving and resume tests.

Also a script: ``python tests/resume_worker.py SPEC.json`` trains as the spec
says and writes the final weights to ``spec["out"]`` (``.npz``). The resume
tests run it in a subprocess that is killed with SIGKILL in mid-epoch, then
again to resume and to train an uninterrupted reference in the same process.
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import pydantic
import torch

import keras_steps
import keras_steps.callbacks

BATCH = 8
SAMPLES = 64  # 8 batches per epoch


class DuelOptions(keras_steps.StepOptions):
    """Options of the test GAN."""

    latent_dim: int = pydantic.Field(4, gt=0, description="Latent size.")
    label_noise: float = pydantic.Field(0.05, ge=0, description="Label noise scale.")


class Duel:
    """A two-network, two-optimizer GAN written for these tests."""

    @keras_steps.hookimpl
    def step_options():
        return DuelOptions

    @keras_steps.hookimpl
    def step_model_roles():
        return ("generator", "discriminator")

    @keras_steps.hookimpl
    def step_optimizer_roles():
        return ("generator", "discriminator")

    @keras_steps.hookimpl
    def step_build():
        return {
            "d_loss": keras.metrics.Mean(name="d_loss"),
            "g_loss": keras.metrics.Mean(name="g_loss"),
            "seed_generator": keras.random.SeedGenerator(7),
        }

    @keras_steps.hookimpl
    def step_call(model, inputs, training):
        return model.models["generator"](inputs, training=training)

    @keras_steps.hookimpl
    def train_step(model, data, options):
        generator = model.models["generator"]
        discriminator = model.models["discriminator"]
        state = model.step_state
        real = keras.ops.convert_to_tensor(data)
        n = real.shape[0]
        latents = keras.random.normal(
            (n, options.latent_dim), seed=state["seed_generator"]
        )
        with torch.no_grad():
            fake = generator(latents, training=True)
        labels = keras.ops.concatenate(
            [keras.ops.ones((n, 1)), keras.ops.zeros((n, 1))]
        )
        labels = labels + options.label_noise * keras.random.uniform(
            labels.shape, seed=state["seed_generator"]
        )
        logits = discriminator(keras.ops.concatenate([fake, real]), training=True)
        d_loss = keras.ops.mean(
            keras.losses.binary_crossentropy(labels, logits, from_logits=True)
        )
        keras_steps.backprop(
            d_loss, model.optimizers["discriminator"], discriminator.trainable_weights
        )
        latents = keras.random.normal(
            (n, options.latent_dim), seed=state["seed_generator"]
        )
        logits = discriminator(generator(latents, training=True), training=True)
        g_loss = keras.ops.mean(
            keras.losses.binary_crossentropy(
                keras.ops.zeros((n, 1)), logits, from_logits=True
            )
        )
        keras_steps.backprop(
            g_loss, model.optimizers["generator"], generator.trainable_weights
        )
        state["d_loss"].update_state(d_loss)
        state["g_loss"].update_state(g_loss)
        return {"d_loss": state["d_loss"].result(), "g_loss": state["g_loss"].result()}

    @keras_steps.hookimpl
    def test_step(model):
        return {name: model.step_state[name].result() for name in ("d_loss", "g_loss")}


def register_duel():
    keras_steps.register_step(Duel, name="duel")


def has_step(name: str) -> bool:
    return any(step.name == name for step in keras_steps.list_steps())


#: The shipped ``gan`` step, when its plugin is installed (pytest marks).
NEEDS_GAN = {
    "condition": not has_step("gan"),
    "reason": "the gan step is not installed (keras_steps_plugins.gan)",
}


def data(kind: str):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 8)).astype("float32")
    if kind == "supervised":
        y = (x @ np.linspace(-1, 1, 8, dtype="float32"))[:, None]
        return x, y
    return (x * 0.5 + 1.0,)


def build(kind: str, options: dict | None = None, steps_per_execution: int = 1):
    """A compiled model of ``kind``: "supervised", "duel" or "gan"."""
    keras.utils.set_random_seed(0)
    if kind == "supervised":
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(hidden))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss="mse",
            metrics=["mae"],
            steps_per_execution=steps_per_execution,
        )
        return model
    if kind == "duel":
        register_duel()
    latent = (options or {}).get("latent_dim", 4)
    generator = keras.Sequential(
        [
            keras.Input((latent,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(8),
        ]
    )
    discriminator = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2, seed=3),  # unseeded, torch uses its global RNG
            keras.layers.Dense(1),
        ]
    )
    model = keras_steps.StepModel(
        models={"generator": generator, "discriminator": discriminator},
        step=kind,
        step_options={"latent_dim": latent, **(options or {})},
    )
    model.compile(
        optimizer={
            "generator": keras.optimizers.Adam(2e-3),
            "discriminator": keras.optimizers.Adam(1e-3, beta_1=0.5),
        },
        steps_per_execution=steps_per_execution,
    )
    return model


def fit(model, kind: str, epochs: int, callbacks=(), initial_epoch=0):
    return model.fit(
        *data(kind),
        batch_size=BATCH,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )


def weights(model) -> list[np.ndarray]:
    """Every network weight and every optimizer variable, in a stable order."""
    values = [keras.ops.convert_to_numpy(v) for v in model.weights]
    for role in sorted(model.optimizers):
        values += [
            keras.ops.convert_to_numpy(v) for v in model.optimizers[role].variables
        ]
    return values


class Stop(Exception):
    """The interruption a test provokes with :class:`StopAt`."""


class StopAt(keras.callbacks.Callback):
    """Interrupt fit() right after batch ``batch`` of epoch ``epoch``.

    Raises :class:`Stop`, or with ``kill=True`` SIGKILLs this process. Put it
    before a ``BackupAndRestore`` to stop before that batch's backup.
    """

    def __init__(self, epoch: int, batch: int, kill: bool = False):
        super().__init__()
        self.at = (epoch, batch)
        self.kill = kill
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise Stop


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    kind, epochs = spec["kind"], spec["epochs"]
    backup_class = (
        keras_steps.callbacks.BackupAndRestore
        if spec.get("callback") == "keras_steps"
        else keras.callbacks.BackupAndRestore
    )
    backup = backup_class(spec["backup_dir"], save_freq=spec["save_freq"])
    callbacks = [backup]
    if spec.get("kill_at"):
        callbacks.append(StopAt(*spec["kill_at"], kill=True))
    model = build(kind)
    history = fit(model, kind, epochs, callbacks)
    arrays = {f"resumed_{i}": w for i, w in enumerate(weights(model))}
    if spec.get("reference"):
        reference = build(kind)
        reference_history = fit(reference, kind, epochs)
        arrays |= {f"reference_{i}": w for i, w in enumerate(weights(reference))}
        with open(spec["out"] + ".json", "w") as f:
            json.dump(
                {
                    name: {k: [float(v) for v in vs] for k, vs in h.history.items()}
                    for name, h in (
                        ("resumed", history),
                        ("reference", reference_history),
                    )
                },
                f,
            )
    np.savez(spec["out"], **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
