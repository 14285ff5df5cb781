"""The ``mixup`` step: mixed inputs and labels, CutMix boxes, what mixing changes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _single_network import (
    FORMS,
    blobs,
    check_bad_option,
    check_demo,
    check_form,
    check_metrics_reset,
    check_mixed_precision,
    check_optimizer_option,
    classifier,
)

import keras_steps


class _Recorder(keras.layers.Layer):
    """Identity that keeps the last input it saw in training."""

    def call(self, x, training=None):
        if training:
            self.seen = keras.ops.convert_to_numpy(x).copy()
        return x


def _recording_model(step_options, input_shape, classes=3):
    keras.utils.set_random_seed(2)
    inputs = keras.Input(shape=input_shape)
    recorder = _Recorder()
    h = keras.layers.Flatten()(recorder(inputs))
    outputs = keras.layers.Dense(classes, activation="softmax")(h)
    model = keras_steps.StepModel(
        inputs, outputs, step="mixup", step_options=step_options
    )
    return model, recorder


def _cross_entropy(labels, probs):
    return -np.sum(labels * np.log(np.clip(probs, 1e-7, 1.0)), axis=-1)


def _expected_loss(model, mixed, y, perm, lam, sample_weight, classes=3):
    """Cross-entropy against the mixed one-hot labels, weighted per source."""
    probs = model.predict(mixed, verbose=0)
    onehot = np.eye(classes)[y]
    first = _cross_entropy(onehot, probs) * sample_weight
    second = _cross_entropy(onehot[perm], probs) * sample_weight[perm]
    return float(np.mean(lam * first + (1 - lam) * second))


@pytest.mark.parametrize("labels", ["sparse", "one-hot"])
def test_mixup_trains_on_mixed_inputs_against_mixed_labels(labels):
    n = 8
    x = np.eye(n, dtype="float32")  # row i is e_i: the mix shows lam and perm
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    sample_weight = np.linspace(0.5, 2.0, n).astype("float32")
    model, recorder = _recording_model({"alpha": 1.0, "seed": 4}, (n,))
    if labels == "sparse":
        targets, loss = y, "sparse_categorical_crossentropy"
    else:
        targets, loss = np.eye(3, dtype="float32")[y], "categorical_crossentropy"
    model.compile(keras.optimizers.SGD(0.0), loss, metrics=["accuracy"])
    history = model.fit(
        x, targets, sample_weight=sample_weight, batch_size=n, shuffle=False, verbose=0
    )

    mixed = recorder.seen
    moved = [i for i in range(n) if mixed[i, i] < 1.0]
    assert moved, "lam was 1: nothing mixed"
    lam = float(mixed[moved[0], moved[0]])
    perm = np.array(
        [i if mixed[i, i] == 1.0 else int(np.argmax(mixed[i] - x[i])) for i in range(n)]
    )
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    assert sorted(perm) == list(range(n))

    want = _expected_loss(model, mixed, y, perm, lam, sample_weight)
    assert history.history["loss"][0] == pytest.approx(want, rel=1e-4)
    dominant = y if lam >= 0.5 else y[perm]
    accuracy = np.mean(np.argmax(model.predict(mixed, verbose=0), axis=1) == dominant)
    assert history.history["accuracy"][0] == pytest.approx(accuracy)


def test_cutmix_pastes_one_box_and_corrects_lam_by_its_area():
    n, side = 6, 8
    x = np.repeat(
        np.arange(1, n + 1, dtype="float32")[:, None, None, None] / 10, side * side, 1
    )
    x = x.reshape(n, side, side, 1)  # image i is the constant (i + 1) / 10
    y = np.array([0, 1, 2, 0, 1, 2])
    model, recorder = _recording_model(
        {"mode": "cutmix", "alpha": 1.0, "seed": 1}, (side, side, 1)
    )
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    history = model.fit(x, y, batch_size=n, shuffle=False, verbose=0)

    mixed = recorder.seen[..., 0]
    source = np.rint(mixed * 10).astype(int) - 1  # which image each pixel came from
    others = [np.unique(s[s != i]) for i, s in enumerate(source)]
    perm = np.array([o[0] if len(o) else i for i, o in enumerate(others)])
    box = source != np.arange(n)[:, None, None]
    changed = [i for i in range(n) if perm[i] != i]
    assert changed, "every image was pasted onto itself"
    box = box[changed[0]]
    rows, cols = np.nonzero(box)
    assert box.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1), (
        "the pasted region is a box"
    )
    for i in range(n):  # the same box for every image, filled from x[perm[i]]
        np.testing.assert_array_equal(source[i][box], perm[i])
        np.testing.assert_array_equal(source[i][~box], i)
    lam = 1.0 - box.sum() / (side * side)
    assert 0.0 < lam < 1.0
    want = _expected_loss(model, recorder.seen, y, perm, lam, np.ones(n))
    assert history.history["loss"][0] == pytest.approx(want, rel=1e-4)


def _interpolation_error(model, x, y, rng, pairs=200):
    """Mean |p(class of a) at t*a + (1-t)*b - t| over pairs from different classes."""
    first = rng.integers(0, len(x), pairs)
    second = rng.integers(0, len(x), pairs)
    keep = y[first] != y[second]
    first, second = first[keep], second[keep]
    errors = []
    for t in (0.2, 0.4, 0.6, 0.8):
        probs = model.predict(t * x[first] + (1 - t) * x[second], verbose=0)
        errors.append(np.abs(probs[np.arange(len(first)), y[first]] - t))
    return float(np.mean(errors))


def test_mixup_makes_predictions_between_examples_follow_the_mix():
    """mixup trains the model to be linear between examples (its stated aim);
    plain training jumps from one class to the other. Both learn the task."""
    x, y = blobs(n=240, dim=8, classes=3, seed=3, spread=1.5)
    x_test, y_test = blobs(n=150, dim=8, classes=3, seed=3, spread=1.5)
    x_test, y_test = x_test[::-1].copy(), y_test[::-1].copy()
    results = {}
    for step, options in (("supervised", None), ("mixup", {"alpha": 1.0, "seed": 0})):
        keras.utils.set_random_seed(0)
        model = classifier(step, options, hidden=32)
        model.compile(
            keras.optimizers.Adam(0.01),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(x, y, batch_size=32, epochs=30, verbose=0)
        accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)[
            "accuracy"
        ]
        error = _interpolation_error(model, x_test, y_test, np.random.default_rng(0))
        results[step] = (accuracy, error)
    assert results["supervised"][0] > 0.9 and results["mixup"][0] > 0.9, results
    assert results["mixup"][1] < 0.5 * results["supervised"][1], results


def test_evaluate_is_plain_supervised_evaluation():
    x, y = blobs(n=64)
    model = classifier("mixup", {"seed": 0})
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    twin = classifier("supervised")
    twin.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    twin.set_weights(model.get_weights())
    assert model.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(
        twin.evaluate(x, y, verbose=0, return_dict=True)
    )
    np.testing.assert_allclose(model.predict(x, verbose=0), twin.predict(x, verbose=0))


def test_seed_option_makes_training_reproducible():
    x, y = blobs(n=64)

    def train(seed):
        keras.utils.set_random_seed(0)
        model = classifier("mixup", {"seed": seed})
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return np.concatenate([w.ravel() for w in model.get_weights()])

    np.testing.assert_array_equal(train(3), train(3))
    assert np.abs(train(3) - train(4)).max() > 1e-4


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_forms_fit_evaluate_predict(form, mode):
    x, y = blobs(n=96, dim=16, spread=0.7)
    check_form("mixup", {"mode": mode, "seed": 0}, form, x.reshape(-1, 4, 4, 1), y)


@pytest.mark.parametrize(
    "option", ["clipnorm", "global_clipnorm", "gradient_accumulation_steps", "use_ema"]
)
def test_optimizer_options_apply_unchanged(option):
    x, y = blobs(n=32)
    check_optimizer_option("mixup", {"seed": 0}, option, x, y)


def test_metrics_reset_each_epoch_and_evaluate():
    check_metrics_reset("mixup", {"seed": 0}, ["loss", "accuracy"])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixed_precision_trains_without_nan(policy, mode):
    x, y = blobs(n=96, dim=16, spread=0.7)
    check_mixed_precision(
        "mixup", {"mode": mode, "seed": 0}, policy, x.reshape(-1, 4, 4, 1), y
    )


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"mode": "blend"}, "mode"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -0.5}, "alpha"),
        ({"seed": -1}, "seed"),
        ({"lam": 0.5}, "lam"),
    ],
)
def test_bad_options_name_step_and_field(options, field):
    check_bad_option("mixup", options, field)


def test_alpha_defaults_follow_the_mode():
    from keras_steps_plugins import mixup

    assert mixup.mixing_alpha(mixup.MixupOptions()) == 0.2
    assert mixup.mixing_alpha(mixup.MixupOptions(mode="cutmix")) == 1.0
    assert mixup.mixing_alpha(mixup.MixupOptions(mode="cutmix", alpha=0.3)) == 0.3


def test_unusable_inputs_are_clear_errors():
    x, y = blobs(n=16)
    model = classifier("mixup", {"mode": "cutmix"})
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(keras_steps.StepError, match=r"'mixup'.*cutmix.*rank 4"):
        model.fit(x, y, epochs=1, verbose=0)
    model = classifier("mixup")
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(keras_steps.StepError, match=r"'mixup'.*floating-point"):
        model.fit(x.astype("int32"), y, epochs=1, verbose=0)
    with pytest.raises(keras_steps.StepError, match=r"'mixup'.*targets"):
        model.fit(x, epochs=1, verbose=0)


def test_demo_writes_accuracy_curves(tmp_path):
    from keras_steps_plugins import mixup

    check_demo(mixup, tmp_path)
