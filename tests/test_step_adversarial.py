"""The ``adversarial`` step: FGSM/PGD inputs, robust accuracy, Keras integration."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
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
from keras_steps_plugins import adversarial

import keras_steps


def robust_and_weak_features(n, seed, weak=30, eta=0.25):
    """Tsipras et al. (2019)'s task: one robust feature, many weak ones.

    Feature 0 is the class sign (flipped for 10% of examples); the other
    ``weak`` features are N(eta * sign, 1). Together the weak ones predict
    better than the robust one, but an L-infinity attack of 2 * eta reverses
    them all, while it cannot flip feature 0.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = 2 * y - 1
    robust = np.where(rng.random(n) < 0.9, sign, -sign) + rng.normal(scale=0.1, size=n)
    features = sign[:, None] * eta + rng.normal(size=(n, weak))
    return np.concatenate([robust[:, None], features], 1).astype("float32"), y


def independent_pgd_accuracy(model, x, y, epsilon, steps=20):
    """Robust accuracy under a PGD attack written here, apart from the step."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    generator = torch.Generator().manual_seed(0)
    x_adv = x + (torch.rand(x.shape, generator=generator) * 2 - 1) * epsilon
    for _ in range(steps):
        x_adv.requires_grad_(True)
        log_probs = torch.log(model(x_adv, training=False) + 1e-7)
        (grad,) = torch.autograd.grad(torch.nn.functional.nll_loss(log_probs, y), x_adv)
        step = x_adv.detach() + 2.5 * epsilon / steps * grad.sign()
        x_adv = torch.minimum(torch.maximum(step, x - epsilon), x + epsilon)
    with torch.no_grad():
        return float((model(x_adv, training=False).argmax(-1) == y).float().mean())


def test_adversarial_training_raises_robust_accuracy():
    x, y = robust_and_weak_features(512, seed=0)
    x_test, y_test = robust_and_weak_features(512, seed=1)
    attack = {"epsilon": 0.5, "n_steps": 5, "seed": 0}
    results = {}
    for label, step, options in (
        ("plain", "supervised", None),
        ("adversarial", "adversarial", {**attack, "adv_ratio": 0.5}),
    ):
        keras.utils.set_random_seed(0)
        model = classifier(step, options, input_shape=(31,), classes=2, hidden=32)
        model.compile(
            keras.optimizers.Adam(0.01),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        history = model.fit(x, y, batch_size=64, epochs=15, verbose=0).history
        clean = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
        robust = independent_pgd_accuracy(model, x_test, y_test, attack["epsilon"])
        results[label] = (history, clean, robust)
    _, plain_clean, plain_robust = results["plain"]
    adv_history, adv_clean, adv_robust = results["adversarial"]
    assert plain_clean["accuracy"] > 0.9 and plain_robust < 0.3, results["plain"][1:]
    assert adv_clean["accuracy"] > 0.85 and adv_robust > 0.8, results["adversarial"][1:]
    assert adv_history["loss"][-1] < 0.6 * adv_history["loss"][0]
    assert adv_history["adv_accuracy"][-1] > adv_history["adv_accuracy"][0] + 0.5
    # The step's own evaluation measures the same robustness.
    assert adv_clean["adv_accuracy"] == pytest.approx(adv_robust, abs=0.05)


def _fgsm_model(options=None, classes=3, dim=6):
    keras.utils.set_random_seed(4)
    model = classifier("adversarial", options, input_shape=(dim,), classes=classes)
    model.compile(
        keras.optimizers.SGD(0.0),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _loss_and_input_gradient(model, x, y):
    x = torch.as_tensor(x).requires_grad_(True)
    probs = model(x, training=False)
    losses = -torch.log(probs[torch.arange(len(y)), torch.as_tensor(y)])
    (grad,) = torch.autograd.grad(losses.mean(), x)
    return losses.detach().numpy(), grad.numpy()


def test_fgsm_is_one_signed_gradient_step_and_leaves_weights_alone():
    x, y = blobs(n=16, dim=6)
    x = np.clip(x, -1.5, 1.5)  # valid inputs; the range still binds near its ends
    options = adversarial.AdversarialOptions(epsilon=0.2, clip_min=-1.5, clip_max=1.5)
    model = _fgsm_model(options)
    weights = [w.copy() for w in model.get_weights()]
    _, grad = _loss_and_input_gradient(model, x, y)
    x_adv = adversarial.attack(
        model, torch.as_tensor(x), torch.as_tensor(y), options
    ).numpy()

    np.testing.assert_allclose(
        x_adv, np.clip(x + 0.2 * np.sign(grad), -1.5, 1.5), atol=1e-6
    )
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert all(v.value.grad is None for v in model.trainable_weights)
    assert (
        _loss_and_input_gradient(model, x_adv, y)[0].mean()
        > _loss_and_input_gradient(model, x, y)[0].mean()
    )


def test_attack_runs_the_network_in_inference_mode():
    """No dropout noise in the attack, no BatchNormalization update from it."""
    x, y = blobs(n=16, dim=6)
    keras.utils.set_random_seed(4)
    inputs = keras.Input(shape=(6,))
    h = keras.layers.Dense(16)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.5)(h)
    outputs = keras.layers.Dense(3, activation="softmax")(h)
    options = {"epsilon": 0.2, "n_steps": 3, "random_start": False}
    model = keras_steps.StepModel(
        inputs, outputs, step="adversarial", step_options=options
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    state = [v.numpy().copy() for v in model.non_trainable_variables]
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    first = adversarial.attack(model, xt, yt, model.step_options).numpy()
    second = adversarial.attack(model, xt, yt, model.step_options).numpy()
    np.testing.assert_array_equal(first, second)
    for before, v in zip(state, model.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(before, v.numpy())


def test_pgd_stays_in_the_ball_and_clip_range_and_beats_fgsm():
    x, y = blobs(n=64, dim=6)
    x = np.clip(x, -3.0, 3.0)  # valid inputs; the range still binds near its ends
    keras.utils.set_random_seed(4)
    model = classifier("adversarial", None, input_shape=(6,))
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, verbose=0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    pgd = adversarial.AdversarialOptions(
        epsilon=0.5, n_steps=10, clip_min=-3.0, clip_max=3.0
    )
    fgsm = adversarial.AdversarialOptions(epsilon=0.5, clip_min=-3.0, clip_max=3.0)
    assert adversarial.attack_step_size(pgd) == pytest.approx(0.125)
    assert adversarial.attack_random_start(pgd) and not adversarial.attack_random_start(
        fgsm
    )
    x_pgd = adversarial.attack(model, xt, yt, pgd).numpy()
    x_fgsm = adversarial.attack(model, xt, yt, fgsm).numpy()
    assert np.abs(x_pgd - x).max() <= 0.5 + 1e-6
    assert x_pgd.min() >= -3.0 and x_pgd.max() <= 3.0
    loss = lambda inputs: _loss_and_input_gradient(model, inputs, y)[0].mean()  # noqa: E731
    assert loss(x_pgd) > loss(x_fgsm) > loss(x)


def test_random_start_follows_the_seed_option():
    x, y = blobs(n=16, dim=6)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    runs = []
    for seed in (1, 1, 2):
        options = adversarial.AdversarialOptions(epsilon=0.3, n_steps=2, seed=seed)
        runs.append(adversarial.attack(_fgsm_model(options), xt, yt, options).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - runs[2]).max() > 1e-3


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_training_loss_is_the_weighted_clean_and_adversarial_loss(ratio):
    x, y = blobs(n=16, dim=6)
    sample_weight = np.linspace(0.0, 2.0, len(y)).astype("float32")
    options = {"epsilon": 0.3, "adv_ratio": ratio}
    model = _fgsm_model(options)
    x_adv = adversarial.attack(
        model, torch.as_tensor(x), torch.as_tensor(y), model.step_options
    ).numpy()
    clean = np.mean(_loss_and_input_gradient(model, x, y)[0] * sample_weight)
    adv = np.mean(_loss_and_input_gradient(model, x_adv, y)[0] * sample_weight)
    history = model.fit(
        x, y, sample_weight=sample_weight, batch_size=16, verbose=0
    ).history
    assert history["loss"][0] == pytest.approx(
        (1 - ratio) * clean + ratio * adv, rel=1e-5
    )
    assert history["adv_loss"][0] == pytest.approx(adv, rel=1e-5)
    clean_accuracy = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    adv_accuracy = np.mean(np.argmax(model.predict(x_adv, verbose=0), -1) == y)
    assert history["accuracy"][0] == pytest.approx(clean_accuracy)
    assert history["adv_accuracy"][0] == pytest.approx(adv_accuracy)


def test_evaluate_reports_clean_metrics_and_the_same_attack():
    x, y = blobs(n=32, dim=6)
    model = _fgsm_model({"epsilon": 0.4})
    twin = classifier("supervised", input_shape=(6,))
    twin.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    twin.set_weights(model.get_weights())
    results = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy", "adv_loss", "adv_accuracy"}
    clean = twin.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert results["loss"] == pytest.approx(clean["loss"])
    assert results["accuracy"] == pytest.approx(clean["accuracy"])
    x_adv = adversarial.attack(
        model, torch.as_tensor(x), torch.as_tensor(y), model.step_options
    )
    adv = twin.evaluate(x_adv.numpy(), y, batch_size=32, verbose=0, return_dict=True)
    assert results["adv_loss"] == pytest.approx(adv["loss"])
    assert results["adv_accuracy"] == pytest.approx(adv["accuracy"])
    assert results["adv_loss"] > results["loss"]
    assert model.predict(x, verbose=0).shape == (32, 3)


@pytest.mark.parametrize(
    ("metric", "labels", "reported"),
    [
        (None, "sparse", False),
        ("sparse_categorical_crossentropy", "sparse", False),
        ("sparse_categorical_accuracy", "sparse", True),
        ("acc", "one-hot", True),
        ("categorical_accuracy", "one-hot", True),
    ],
)
def test_adv_accuracy_follows_the_compiled_accuracy(metric, labels, reported):
    x, y = blobs(n=32, dim=6)
    model = classifier("adversarial", {"epsilon": 0.4}, input_shape=(6,))
    if labels == "sparse":
        loss, targets = "sparse_categorical_crossentropy", y
    else:
        loss, targets = "categorical_crossentropy", np.eye(3, dtype="float32")[y]
    model.compile("sgd", loss, metrics=[metric] if metric else None)
    history = model.fit(x, targets, epochs=1, verbose=0).history
    results = model.evaluate(x, targets, verbose=0, return_dict=True)
    assert ("adv_accuracy" in history) is reported
    assert ("adv_accuracy" in results) is reported
    assert "adv_loss" in history and "adv_loss" in results
    if reported:
        x_adv = adversarial.attack(
            model, torch.as_tensor(x), torch.as_tensor(targets), model.step_options
        )
        want = np.mean(np.argmax(model.predict(x_adv.numpy(), verbose=0), -1) == y)
        assert results["adv_accuracy"] == pytest.approx(want)


def test_binary_accuracy_for_one_sigmoid_output():
    x, y = blobs(n=32, dim=6, classes=2)
    inputs = keras.Input(shape=(6,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = keras_steps.StepModel(
        inputs, outputs, step="adversarial", step_options={"epsilon": 0.3}
    )
    model.compile(
        keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"]
    )
    targets = y[:, None].astype("float32")
    model.fit(x, targets, epochs=5, verbose=0)
    results = model.evaluate(x, targets, verbose=0, return_dict=True)
    x_adv = adversarial.attack(
        model, torch.as_tensor(x), torch.as_tensor(targets), model.step_options
    )
    want = np.mean((model.predict(x_adv.numpy(), verbose=0) > 0.5) == targets)
    assert results["adv_accuracy"] == pytest.approx(want)


@pytest.mark.parametrize("form", FORMS)
def test_forms_fit_evaluate_predict(form):
    x, y = blobs()
    _, results = check_form("adversarial", {"epsilon": 0.1}, form, x, y)
    assert results["adv_accuracy"] <= results["accuracy"]


@pytest.mark.parametrize(
    "option", ["clipnorm", "global_clipnorm", "gradient_accumulation_steps", "use_ema"]
)
def test_optimizer_options_apply_unchanged(option):
    x, y = blobs(n=32)
    check_optimizer_option(
        "adversarial", {"epsilon": 0.2, "n_steps": 2, "seed": 0}, option, x, y
    )


def test_metrics_reset_each_epoch_and_evaluate():
    check_metrics_reset(
        "adversarial",
        {"epsilon": 0.3},
        ["loss", "accuracy", "adv_loss", "adv_accuracy"],
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_without_nan(policy):
    x, y = blobs()
    history = check_mixed_precision(
        "adversarial", {"epsilon": 0.2, "n_steps": 3, "seed": 0}, policy, x, y
    )
    assert history["adv_loss"][-1] < history["adv_loss"][0]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"epsilon": 0}, "epsilon"),
        ({"step_size": -0.1}, "step_size"),
        ({"n_steps": 0}, "n_steps"),
        ({"adv_ratio": 1.5}, "adv_ratio"),
        ({"clip_min": 1.0, "clip_max": 0.0}, "clip_min"),
        ({"seed": -2}, "seed"),
        ({"eps": 0.1}, "eps"),
    ],
)
def test_bad_options_name_step_and_field(options, field):
    check_bad_option("adversarial", options, field)


def test_integer_inputs_are_a_clear_error():
    x, y = blobs(n=16)
    model = classifier("adversarial")
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(keras_steps.StepError, match=r"'adversarial'.*floating-point"):
        model.fit(x.astype("int32"), y, epochs=1, verbose=0)


def test_demo_writes_accuracy_curves(tmp_path):
    from keras_steps_plugins import adversarial

    check_demo(adversarial, tmp_path)
