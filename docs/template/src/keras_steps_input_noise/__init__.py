"""Supervised training on inputs perturbed by Gaussian noise (Bishop 1995).

Adding noise to the inputs while training is a regulariser: for small noise
it is equivalent to Tikhonov regularisation (C. M. Bishop, "Training with
noise is equivalent to Tikhonov regularization", Neural Computation 7(1),
1995), so a linear model ends up with smaller weights, as with an L2 penalty.
Every training batch gets fresh noise ``N(0, stddev**2)`` on each floating
point input; evaluation and prediction see the clean inputs.

Usage::

    model = keras_steps.StepModel(
        inputs, outputs, step="input-noise", step_options={"stddev": 0.3}
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    model.fit(x, y, epochs=10)
"""

from __future__ import annotations

import keras
from pydantic import Field

import keras_steps


class Options(keras_steps.StepOptions):
    """Options of the ``input-noise`` step."""

    stddev: float = Field(
        0.1,
        ge=0.0,
        description="Standard deviation of the Gaussian noise added to every "
        "floating point input value during training; 0 trains on clean inputs.",
    )
    seed: int = keras_steps.seed_field(
        1337, "Seed of the noise; its generator is saved with the model."
    )


@keras_steps.hookimpl
def step_options():
    return Options


@keras_steps.hookimpl
def step_build(options):
    # State returned here is tracked by Keras: saved with the model, and
    # metrics in it are reset every epoch.
    return {"noise": keras.random.SeedGenerator(options.seed)}


@keras_steps.hookimpl
def train_step(model, data, options):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    seed = model.step_state["noise"]

    def perturb(t):
        dtype = keras.backend.standardize_dtype(t.dtype)
        if "float" not in dtype:  # leave integer inputs (token ids) alone
            return t
        noise = keras.random.normal(
            keras.ops.shape(t), stddev=options.stddev, dtype=dtype, seed=seed
        )
        return t + noise

    x = keras.tree.map_structure(perturb, x)
    y_pred = model(x, training=True)
    loss = model.compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )
    # Scales the loss for mixed precision, back-propagates, applies.
    keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
    batch_size = keras.ops.shape(keras.tree.flatten(x)[0])[0]
    for metric in model.metrics:
        if metric.name == "loss":
            # Weighted by batch size, as Keras's own step does.
            metric.update_state(loss, sample_weight=batch_size)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)



# No test_step: evaluation sees clean inputs through Keras's own test step,
# the default of a step that does not implement it.
