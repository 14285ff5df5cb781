"""Knowledge distillation (Hinton et al. 2015): a student learns from a frozen teacher.

Wraps a trained teacher and a (usually smaller) student::

    distiller = keras_steps.StepModel(
        models={"student": student, "teacher": teacher},
        step="distillation",
        step_options={"alpha": 0.1, "temperature": 3},
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    distiller.fit(x, y, epochs=3)
    student_logits = distiller.predict(x)

Both networks output class logits (or probabilities: see the
``teacher_outputs`` and ``student_outputs`` options) on the last axis. Per
batch::

    student_loss = the compiled loss of the student's outputs on the labels
    distillation_loss = KL(softmax(teacher / T) || softmax(student / T)) * T**2
    loss = alpha * student_loss + (1 - alpha) * distillation_loss

as in the Keras distillation example (``T`` is ``temperature``; the ``T**2``
keeps the soft targets' gradients on the scale of the hard ones). The KL
divergence is summed over classes and averaged over examples, each weighted
by its ``sample_weight`` as Keras's losses do; it is computed in float32 from
log-softmaxes, without the example's clipping of probabilities.
``student_loss`` is ``model.compute_loss``, so ``sample_weight``,
``class_weight`` and the student's regularization losses count as they
would for the student trained alone: the regularization enters ``loss`` with
weight 1 (not ``alpha``), and ``student_loss`` is comparable with that
student's own ``loss``.

The teacher is frozen for this step only: it is a frozen role
(``step_frozen_roles``), so ``model.trainable_weights`` holds only the
student's, and the teacher runs under ``torch.no_grad()`` with
``training=False``; the optimizer updates only the student's weights. The
teacher network itself is not changed: its ``trainable`` flag stays as it
was, and it trains as before in a model of its own. It must be built (a
trained teacher is): an unbuilt one is refused. ``evaluate()`` reports
the same metrics on labelled data without updating anything, so ``val_loss``
is the training objective and ``val_student_loss`` the student's own loss.
``model(x)`` and ``predict(x)`` return the student's outputs.
"""

from __future__ import annotations

from typing import Literal

import keras
import torch
from keras import ops
from pydantic import Field

import keras_steps
from keras_steps import StepError

from ._batch_losses import (
    additional_losses,
    per_example_weights,
    reduce_per_example,
)

NAME = "distillation"
STUDENT, TEACHER = "student", "teacher"


class DistillationOptions(keras_steps.StepOptions):
    """Options of the ``distillation`` step."""

    alpha: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Weight of the student's loss on the labels; the distillation "
        "loss gets 1 - alpha.",
    )
    temperature: float = Field(
        3.0,
        gt=0.0,
        description="Softmax temperature T applied to both networks' logits; higher "
        "T gives softer targets.",
    )
    teacher_outputs: Literal["logits", "probabilities"] = Field(
        "logits",
        description="What the teacher returns: 'logits', or 'probabilities' (a "
        "softmax output, as keras.applications models give by default; the step "
        "takes their log).",
    )
    student_outputs: Literal["logits", "probabilities"] = Field(
        "logits",
        description="What the student returns: 'logits' or 'probabilities'. The "
        "compiled loss must agree (from_logits=True for logits).",
    )


@keras_steps.hookimpl
def step_options():
    return DistillationOptions


@keras_steps.hookimpl
def step_model_roles():
    return (STUDENT, TEACHER)


@keras_steps.hookimpl
def step_optimizer_roles():
    return (STUDENT,)


@keras_steps.hookimpl
def step_frozen_roles():
    return (TEACHER,)


@keras_steps.hookimpl
def step_arguments():
    return {"y": "required", "loss": "required"}


@keras_steps.hookimpl
def step_build(model):
    student, teacher = model.models[STUDENT], model.models[TEACHER]
    teacher_weights = {id(w) for w in teacher.weights}
    if student is teacher or any(id(w) in teacher_weights for w in student.weights):
        raise StepError(
            f"Step {NAME!r}: the student and the teacher share weights; freezing the "
            "teacher would freeze the student too. Give the student its own network "
            "(keras.models.clone_model(teacher) for self-distillation)."
        )
    if not teacher.built:
        raise StepError(
            f"Step {NAME!r}: the teacher network {teacher.name!r} is not built, so it "
            "has no trained weights to distill. Pass a trained teacher (train it, or "
            "build it and load its weights, first)."
        )
    return {
        # Named "loss", this tracker replaces the compile() loss tracker.
        "loss": keras.metrics.Mean(name="loss"),
        "student_loss": keras.metrics.Mean(name="student_loss"),
        "distillation_loss": keras.metrics.Mean(name="distillation_loss"),
    }


@keras_steps.hookimpl
def step_call(model, inputs, training):
    return model.models[STUDENT](inputs, training=training)


@keras_steps.hookimpl
def train_step(model, data, options):
    x, y, sample_weight, y_pred, losses = _losses(model, data, options, True)
    keras_steps.backprop(
        losses["loss"],
        model.optimizers[STUDENT],
        model.models[STUDENT].trainable_weights,
    )
    return _metrics(model, x, y, y_pred, sample_weight, losses)


@keras_steps.hookimpl
def test_step(model, data, options):
    x, y, sample_weight, y_pred, losses = _losses(model, data, options, False)
    return _metrics(model, x, y, y_pred, sample_weight, losses)


def _losses(model, data, options, training):
    # step_arguments makes StepModel refuse data without y, and fit() or
    # evaluate() without a compiled loss, before this runs.
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with torch.no_grad():
        teacher_pred = model.models[TEACHER](x, training=False)
    y_pred = model.models[STUDENT](x, training=training)
    for role, pred in ((STUDENT, y_pred), (TEACHER, teacher_pred)):
        if not ops.is_tensor(pred):
            raise StepError(
                f"Step {NAME!r}: the {role} must return one tensor of class scores; "
                f"it returned a {type(pred).__name__}."
            )
    if tuple(y_pred.shape) != tuple(teacher_pred.shape):
        raise StepError(
            f"Step {NAME!r}: the student's outputs {tuple(y_pred.shape)} and the "
            f"teacher's {tuple(teacher_pred.shape)} must have the same shape (one "
            "score per class on the last axis)."
        )
    student_loss = model.compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )
    student_loss = ops.cast(student_loss, "float32")
    batch_size = y_pred.shape[0]
    distillation = reduce_per_example(
        _distillation_per_example(teacher_pred, y_pred, options, batch_size),
        per_example_weights(NAME, sample_weight, batch_size),
    )
    # student_loss already holds the regularization losses; scaling them by
    # alpha would silently weaken them, so the rest is added here.
    rest = additional_losses(model)
    alpha = options.alpha
    total = alpha * student_loss + (1.0 - alpha) * (distillation + rest)
    losses = {
        "loss": total,
        "student_loss": student_loss,
        "distillation_loss": distillation,
    }
    return x, y, sample_weight, y_pred, losses


def _distillation_per_example(teacher_pred, student_pred, options, batch_size):
    """``KL(softmax(teacher / T) || softmax(student / T)) * T**2`` per example."""
    t = options.temperature
    log_p_teacher = ops.log_softmax(
        _logits(teacher_pred, options.teacher_outputs) / t, axis=-1
    )
    log_p_student = ops.log_softmax(
        _logits(student_pred, options.student_outputs) / t, axis=-1
    )
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    # Outputs with more axes than (batch, classes), e.g. per token: average the
    # positions, as Keras's KLDivergence loss does.
    return ops.mean(ops.reshape(kl, (batch_size, -1)), axis=1) * (t * t)


def _logits(pred, kind):
    pred = ops.cast(pred, "float32")
    if kind == "probabilities":
        # log p is a valid logit vector: softmax(log p) == p.
        return ops.log(ops.clip(pred, keras.config.epsilon(), 1.0))
    return pred


def _metrics(model, x, y, y_pred, sample_weight, losses):
    batch_size = y_pred.shape[0]
    for name in ("loss", "student_loss", "distillation_loss"):
        model.step_state[name].update_state(losses[name], sample_weight=batch_size)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


@keras_steps.hookimpl
def step_demo(out_dir, epochs, steps):
    """Distil a 2x256 MLP teacher into an 8-unit student on 8x8 digits, against
    the same student trained alone."""
    import numpy as np

    from keras_steps import StepModel

    from ._demo import load_digits, save_curves

    keras.utils.set_random_seed(1337)
    images, labels = load_digits(8)
    x = images.reshape(len(images), -1)
    order = np.random.default_rng(0).permutation(len(x))
    train, held_out = order[:1200], order[1200:]
    validation = (x[held_out], labels[held_out])
    fit = {"steps_per_epoch": steps, "verbose": "auto", "validation_data": validation}

    def compile_args():
        return {
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "metrics": ["accuracy"],
        }

    print("Training the teacher (2 x 256 units) on labels:")
    teacher = _demo_mlp((256, 256), "teacher")
    teacher.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_args())
    teacher.fit(x[train], labels[train], epochs=epochs or 30, batch_size=64, **fit)
    teacher_accuracy = teacher.evaluate(*validation, verbose=0)[1]

    student_epochs = epochs or 40
    keras.utils.set_random_seed(1)
    alone = _demo_mlp((8,), "student_alone")
    keras.utils.set_random_seed(1)
    student = _demo_mlp((8,), "student")
    print("Training the student (8 units) alone on labels:")
    alone.compile(optimizer=keras.optimizers.Adam(3e-3), **compile_args())
    h_alone = alone.fit(
        x[train], labels[train], epochs=student_epochs, batch_size=32, **fit
    )
    print("Distilling the teacher into the same student (alpha 0.1, temperature 3):")
    distiller = StepModel(models={"student": student, "teacher": teacher}, step=NAME)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3), **compile_args())
    h_dist = distiller.fit(
        x[train], labels[train], epochs=student_epochs, batch_size=32, **fit
    )

    h_alone, h_dist = h_alone.history, h_dist.history
    print(
        f"held-out accuracy: teacher {teacher_accuracy:.3f}, "
        f"student alone {h_alone['val_accuracy'][-1]:.3f}, "
        f"distilled student {h_dist['val_accuracy'][-1]:.3f}"
    )
    accuracy = {
        "distilled student": h_dist["val_accuracy"],
        "student alone": h_alone["val_accuracy"],
        "teacher": [teacher_accuracy] * student_epochs,
    }
    losses = {
        "distilled: student_loss": h_dist["student_loss"],
        "distilled: distillation_loss": h_dist["distillation_loss"],
        "alone: loss": h_alone["loss"],
    }
    return {
        "accuracy": save_curves(
            accuracy, out_dir / "accuracy.png", title="Held-out accuracy on digits"
        ),
        "losses": save_curves(losses, out_dir / "losses.png", title="Training losses"),
    }


def _demo_mlp(widths, name):
    inputs = keras.Input((64,))
    h = inputs
    for width in widths:
        h = keras.layers.Dense(width, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)
