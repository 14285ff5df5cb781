import math

import keras
import numpy as np
import pytest
import torch
from keras import layers
from step_checks import OPTIMIZER_CHECKS, check_pngs, spy_on_scale_loss

import keras_steps
from keras_steps import OptionsError, StepError, StepModel

FEATURES, CLASSES = 8, 4


def make_data(n=1000, seed=0):
    """A nonlinear 4-class problem that a 64-unit MLP learns to about 75%."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    proj = np.random.default_rng(100).normal(size=(2, FEATURES, CLASSES))
    y = np.argmax(x @ proj[0] + 2 * np.sin(x @ proj[1]), axis=1)
    return x, y


def mlp(width, name, activation=None, kernel_regularizer=None):
    inputs = keras.Input((FEATURES,))
    h = layers.Dense(width, activation="relu", kernel_regularizer=kernel_regularizer)(
        inputs
    )
    return keras.Model(
        inputs, layers.Dense(CLASSES, activation=activation)(h), name=name
    )


@pytest.fixture(scope="module")
def teacher_weights():
    keras.utils.set_random_seed(0)
    x, y = make_data()
    teacher = mlp(64, "teacher")
    teacher.compile(keras.optimizers.Adam(1e-2), _sparse_ce(), metrics=["accuracy"])
    teacher.fit(x[:800], y[:800], epochs=30, batch_size=64, verbose=0)
    assert teacher.evaluate(x[800:], y[800:], verbose=0)[1] > 0.7
    return teacher.get_weights()


def _sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_teacher(weights, activation=None):
    teacher = mlp(64, "teacher", activation=activation)
    teacher.set_weights(weights)
    return teacher


def make_distiller(teacher, options=None, optimizer=None, seed=1, student=None):
    keras.utils.set_random_seed(seed)
    student = student or mlp(16, "student")
    model = StepModel(
        models={"student": student, "teacher": teacher},
        step="distillation",
        step_options=options,
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=_sparse_ce(),
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x, y):
    return model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]


def test_distilled_student_beats_untrained_and_teacher_stays_put(teacher_weights):
    x, y = make_data()
    teacher = make_teacher(teacher_weights)
    model = make_distiller(teacher)
    assert [id(w) for w in model.trainable_weights] == [
        id(w) for w in model.models["student"].trainable_weights
    ]
    untrained = accuracy(model, x[800:], y[800:])
    history = model.fit(x[:800], y[:800], epochs=15, batch_size=64, verbose=0).history
    trained = accuracy(model, x[800:], y[800:])
    assert trained > untrained + 0.3, (untrained, trained)
    assert trained > 0.65
    assert history["distillation_loss"][-1] < 0.5 * history["distillation_loss"][0]
    assert set(history) == {"loss", "accuracy", "student_loss", "distillation_loss"}
    for before, after in zip(teacher_weights, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert teacher.trainable  # frozen for the step only (step_frozen_roles)
    # No gradient work was done for the teacher.
    assert all(w.value.grad is None for w in teacher.weights)


class _Probe(layers.Layer):
    """Records, for each call, whether autograd is on and the training flag."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def call(self, x, training=None):
        self.calls.append((torch.is_grad_enabled(), training))
        return x


def test_teacher_runs_without_autograd_in_inference_mode(teacher_weights):
    x, y = make_data(32)
    probe = _Probe()
    teacher = keras.Sequential([make_teacher(teacher_weights), probe])
    model = make_distiller(teacher)
    probe.calls.clear()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert probe.calls == [(False, False)] * 2


@pytest.mark.parametrize(
    ("alpha", "learns"),
    [(0.0, True), (1.0, False)],
    ids=["teacher-only", "labels-only"],
)
def test_soft_targets_carry_the_knowledge(teacher_weights, alpha, learns):
    # Train on shuffled labels: only the teacher's outputs hold the task.
    x, y = make_data()
    shuffled = np.random.default_rng(1).permutation(y[:800])
    model = make_distiller(make_teacher(teacher_weights), {"alpha": alpha})
    model.fit(x[:800], shuffled, epochs=15, batch_size=64, verbose=0)
    assert (accuracy(model, x[800:], y[800:]) > 0.65) is learns


def test_losses_match_the_keras_distillation_example(teacher_weights):
    x, y = make_data(64)
    teacher = make_teacher(teacher_weights)
    model = make_distiller(teacher, {"alpha": 0.3, "temperature": 2.5})
    results = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    student_pred = model.models["student"].predict(x, verbose=0)
    teacher_pred = teacher.predict(x, verbose=0)
    t = 2.5
    expected_distill = float(
        keras.losses.KLDivergence()(
            keras.ops.softmax(teacher_pred / t, axis=1),
            keras.ops.softmax(student_pred / t, axis=1),
        )
        * t**2
    )
    expected_student = float(_sparse_ce()(y, student_pred))
    assert results["distillation_loss"] == pytest.approx(expected_distill, rel=1e-4)
    assert results["student_loss"] == pytest.approx(expected_student, rel=1e-5)
    assert results["loss"] == pytest.approx(
        0.3 * expected_student + 0.7 * expected_distill, rel=1e-4
    )


def test_probability_outputs_give_the_same_losses(teacher_weights):
    x, y = make_data(64)
    logits = make_distiller(make_teacher(teacher_weights)).evaluate(
        x, y, batch_size=64, verbose=0, return_dict=True
    )
    teacher = make_teacher(teacher_weights, activation="softmax")
    keras.utils.set_random_seed(1)
    student = mlp(16, "student", activation="softmax")
    model = make_distiller(
        teacher,
        {"teacher_outputs": "probabilities", "student_outputs": "probabilities"},
        student=student,
    )
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    probs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    for name in ("student_loss", "accuracy"):
        assert probs[name] == pytest.approx(logits[name], rel=1e-5), name
    # The confident teacher has probabilities under keras.config.epsilon(),
    # which the step clips before taking logs: close, not equal.
    for name in ("loss", "distillation_loss"):
        assert probs[name] == pytest.approx(logits[name], rel=1e-2), name


def test_sample_weight_weights_both_losses(teacher_weights):
    x, y = make_data(64)
    model = make_distiller(make_teacher(teacher_weights))
    half = model.evaluate(x[:32], y[:32], batch_size=64, verbose=0, return_dict=True)
    weights = np.r_[np.ones(32), np.zeros(32)].astype("float32")
    weighted = model.evaluate(
        x, y, sample_weight=weights, batch_size=64, verbose=0, return_dict=True
    )
    for name in ("loss", "student_loss", "distillation_loss"):
        assert weighted[name] == pytest.approx(0.5 * half[name], rel=1e-4), name


def test_regularization_is_not_scaled_by_alpha(teacher_weights):
    x, y = make_data(64)
    student = mlp(16, "student", kernel_regularizer=keras.regularizers.L2(0.01))
    model = make_distiller(
        make_teacher(teacher_weights), {"alpha": 0.1}, student=student
    )
    results = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    penalty = 0.01 * float(np.sum(student.layers[1].get_weights()[0] ** 2))
    # student_loss holds the penalty, as the student's own loss would.
    assert results["loss"] == pytest.approx(
        0.1 * results["student_loss"] + 0.9 * (results["distillation_loss"] + penalty),
        rel=1e-5,
    )
    assert penalty > 0.01


def test_predict_returns_student_outputs(teacher_weights):
    x, _ = make_data(32)
    model = make_distiller(make_teacher(teacher_weights))
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        keras.ops.convert_to_numpy(model.models["student"](x)),
        rtol=1e-6,
    )


def test_evaluate_does_not_update_weights(teacher_weights):
    x, y = make_data(64)
    model = make_distiller(make_teacher(teacher_weights))
    before = [w.numpy().copy() for w in model.weights]
    results = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy", "student_loss", "distillation_loss"}
    assert all(
        np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights, strict=True)
    )


def test_labels_are_required(teacher_weights):
    x, y = make_data(8)
    model = make_distiller(make_teacher(teacher_weights))
    # Refused before Keras's symbolic build, which would fail on the missing y.
    for call in (model.train_on_batch, model.fit, model.evaluate):
        with pytest.raises(keras_steps.ArgumentError, match=r"'distillation' .* needs y"):
            call(x)
    model.train_on_batch(x, y)
    with pytest.raises(keras_steps.ArgumentError, match=r"'distillation' .* needs y"):
        model.train_on_batch(x)


def test_compiled_loss_is_required(teacher_weights):
    x, y = make_data(8)
    model = StepModel(
        models={
            "student": mlp(16, "student"),
            "teacher": make_teacher(teacher_weights),
        },
        step="distillation",
    )
    model.compile(optimizer="adam", metrics=["accuracy"])
    for call in (model.train_on_batch, model.fit, model.evaluate):
        with pytest.raises(
            keras_steps.ArgumentError,
            match=r"'distillation' .* needs loss \(compile\(loss=...\)\)",
        ):
            call(x, y)


def test_output_shapes_must_agree(teacher_weights):
    x, y = make_data(8)
    inputs = keras.Input((FEATURES,))
    student = keras.Model(inputs, layers.Dense(3)(inputs))
    model = make_distiller(make_teacher(teacher_weights), student=student)
    with pytest.raises(
        StepError, match=r"student's outputs \(8, 3\) and the teacher's \(8, 4\)"
    ):
        model.train_on_batch(x, y % 3)


def test_shared_weights_are_rejected(teacher_weights):
    teacher = make_teacher(teacher_weights)
    with pytest.raises(StepError, match="share weights"):
        StepModel(models={"student": teacher, "teacher": teacher}, step="distillation")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"teacher_outputs": "softmax"}, "teacher_outputs"),
        ({"student_outputs": "scores"}, "student_outputs"),
        ({"T": 3}, "T"),
    ],
)
def test_option_errors_name_step_and_field(teacher_weights, options, field):
    with pytest.raises(OptionsError, match="step 'distillation'") as info:
        make_distiller(make_teacher(teacher_weights), options)
    assert repr(field) in str(info.value)


def test_metrics_reset_each_epoch_and_at_evaluate(teacher_weights):
    x, y = make_data(48)
    model = make_distiller(make_teacher(teacher_weights))
    trackers = [model.step_state["student_loss"], model.step_state["distillation_loss"]]
    counts = []

    def record(batch, logs):
        if batch == 0:
            counts.append([float(m.count) for m in trackers])

    model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=record)],
    )
    assert counts == [[16.0, 16.0]] * 3
    model.evaluate(x[:16], y[:16], verbose=0)
    assert [float(m.count) for m in trackers] == [16.0, 16.0]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_scales_the_loss(
    teacher_weights, policy, monkeypatch
):
    x, y = make_data()
    keras.config.set_dtype_policy(policy)
    model = make_distiller(make_teacher(teacher_weights))
    optimizer = model.optimizers["student"]
    if policy == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    scaled = spy_on_scale_loss(monkeypatch, optimizer)
    untrained = accuracy(model, x[800:], y[800:])
    history = model.fit(x[:800], y[:800], epochs=10, batch_size=64, verbose=0).history
    assert scaled == ["float32"] * 10 * 13
    assert all(math.isfinite(v) for values in history.values() for v in values)
    assert accuracy(model, x[800:], y[800:]) > untrained + 0.3


def _fit(model, callbacks, steps=4):
    x, y = make_data(16 * steps)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=callbacks)


@pytest.mark.parametrize("option", sorted(OPTIMIZER_CHECKS))
def test_optimizer_options_work_unchanged(teacher_weights, option):
    def build(make_optimizer):
        return make_distiller(make_teacher(teacher_weights), optimizer=make_optimizer())

    OPTIMIZER_CHECKS[option](build, _fit)


def test_step_is_listed_with_its_roles():
    step = keras_steps.get_step("distillation")
    assert step.model_roles == ("student", "teacher")
    assert step.optimizer_roles == ("student",)
    assert step.summary.startswith("Knowledge distillation")


def test_demo_writes_pictures(tmp_path):
    demo = keras_steps.get_step("distillation").hooks["step_demo"]
    check_pngs(demo(tmp_path, 1, 2), {"accuracy": (480, 320), "losses": (480, 320)})
