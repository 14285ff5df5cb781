"""The ``sam`` step: the exact SAM/ASAM update, flatter minima, Keras integration."""

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

import keras_steps


def _reference_sam_update(weights, x, y, sample_weight, rho, lr, adaptive):
    """One SAM step written out by hand for Dense(tanh) -> Dense(softmax)."""
    w = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in weights]
    x = torch.tensor(x, dtype=torch.float64)
    sw = torch.tensor(sample_weight, dtype=torch.float64)

    def loss_fn(params):
        k1, b1, k2, b2 = params
        probs = torch.softmax(torch.tanh(x @ k1 + b1) @ k2 + b2, dim=-1)
        nll = -torch.log(probs[torch.arange(len(y)), torch.as_tensor(y)])
        return (sw * nll).sum() / len(y)  # Keras's "sum_over_batch_size"

    grads = torch.autograd.grad(loss_fn(w), w)
    with torch.no_grad():
        scale = [p.abs() if adaptive else torch.ones_like(p) for p in w]
        norm = torch.sqrt(
            sum(((s * g) ** 2).sum() for s, g in zip(scale, grads, strict=True))
        )
        shifts = [s * s * g * rho / norm for s, g in zip(scale, grads, strict=True)]
    perturbed = [p + e for p, e in zip(w, shifts, strict=True)]
    sharp_grads = torch.autograd.grad(loss_fn(perturbed), w)
    return [(p - lr * g).detach().numpy() for p, g in zip(w, sharp_grads, strict=True)]


@pytest.mark.parametrize("adaptive", [False, True])
def test_update_equals_hand_written_sam(adaptive):
    x, y = blobs(n=12, dim=5, classes=3)
    sample_weight = np.linspace(0.0, 2.0, len(y)).astype("float32")
    rho = 0.5 if adaptive else 0.2
    inputs = keras.Input(shape=(5,))
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    model = keras_steps.StepModel(
        inputs, outputs, step="sam", step_options={"rho": rho, "adaptive": adaptive}
    )
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    before = [v.numpy().astype("float64") for v in model.trainable_weights]
    expected = _reference_sam_update(before, x, y, sample_weight, rho, 0.5, adaptive)
    plain_sgd = _reference_sam_update(before, x, y, sample_weight, 1e-12, 0.5, adaptive)

    model.fit(x, y, sample_weight=sample_weight, batch_size=len(x), epochs=1, verbose=0)

    after = [v.numpy() for v in model.trainable_weights]
    for got, want in zip(after, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The perturbation mattered: plain SGD would land elsewhere.
    assert (
        max(np.abs(a - b).max() for a, b in zip(expected, plain_sgd, strict=True))
        > 1e-3
    )


def _regression_model(step, options):
    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape=(5,))
    hidden = keras.layers.Dense(64, activation="tanh")(inputs)
    model = keras_steps.StepModel(
        inputs, keras.layers.Dense(1)(hidden), step=step, step_options=options
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def _top_hessian_eigenvalue(model, x, y, iterations=40):
    """Largest eigenvalue of the training loss's Hessian, by power iteration."""
    params = [v.value for v in model.trainable_weights]
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    loss = model.compute_loss(x, y, model(x, training=False), training=False)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator().manual_seed(0)
    vector = [torch.randn(p.shape, generator=generator) for p in params]
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        vector = [v / norm for v in vector]
        product = torch.autograd.grad(
            grads, params, grad_outputs=vector, retain_graph=True
        )
        eigenvalue = float(
            sum((h * v).sum() for h, v in zip(product, vector, strict=True))
        )
        vector = [h.detach() for h in product]
    return eigenvalue


def test_sam_trains_into_a_flatter_minimum_than_sgd():
    """Full-batch SGD sharpens until the Hessian's top eigenvalue nears 2/lr
    (the edge of stability, 20 here); SAM fits the same data with about half
    that curvature."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = (np.sin(2 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]).astype("float32")
    steps = 500  # full-batch steps, as one epoch over repeated copies
    xs, ys = np.tile(x, (steps, 1)), np.tile(y, (steps, 1))
    results = {}
    for step, options in (("supervised", None), ("sam", {"rho": 0.05})):
        model = _regression_model(step, options)
        initial = model.evaluate(x, y, batch_size=64, verbose=0)
        model.fit(xs, ys, batch_size=64, shuffle=False, epochs=1, verbose=0)
        final = model.evaluate(x, y, batch_size=64, verbose=0)
        results[step] = (initial, final, _top_hessian_eigenvalue(model, x, y))
    (sgd_start, sgd_loss, sgd_sharpness) = results["supervised"]
    (sam_start, sam_loss, sam_sharpness) = results["sam"]
    assert sgd_start == pytest.approx(sam_start)
    assert sgd_loss < 0.05 * sgd_start and sam_loss < 0.05 * sam_start, results
    assert sgd_sharpness > 15.0, results
    assert sam_sharpness < 0.65 * sgd_sharpness, results


def test_second_pass_keeps_batchnorm_statistics_and_advances_dropout_seeds():
    x, y = blobs(n=16, dim=6, classes=3)

    def network():
        keras.utils.set_random_seed(3)
        inputs = keras.Input(shape=(6,))
        h = keras.layers.Dense(8)(inputs)
        h = keras.layers.BatchNormalization(momentum=0.5)(h)
        h = keras.layers.Dropout(0.5, seed=11)(h)
        return inputs, keras.layers.Dense(3, activation="softmax")(h)

    model = keras_steps.StepModel(*network(), step="sam", step_options={"rho": 1.0})
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    twin = keras.Model(*network())
    twin.set_weights(model.get_weights())

    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    twin(x, training=True)  # the first, unperturbed pass
    stats = [v for v in model.non_trainable_variables if v.dtype == "float32"]
    twin_stats = [v for v in twin.non_trainable_variables if v.dtype == "float32"]
    assert len(stats) == 2
    for a, b in zip(stats, twin_stats, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    twin(x, training=True)  # the second pass draws the next dropout mask
    seeds = [v for v in model.non_trainable_variables if v.dtype != "float32"]
    twin_seeds = [v for v in twin.non_trainable_variables if v.dtype != "float32"]
    assert len(seeds) == 1
    np.testing.assert_array_equal(seeds[0].numpy(), twin_seeds[0].numpy())


@pytest.mark.parametrize("form", FORMS)
def test_forms_fit_evaluate_predict(form):
    x, y = blobs()
    check_form("sam", {"rho": 0.05}, form, x, y)


@pytest.mark.parametrize(
    "option", ["clipnorm", "global_clipnorm", "gradient_accumulation_steps", "use_ema"]
)
def test_optimizer_options_apply_unchanged(option):
    x, y = blobs(n=32)
    check_optimizer_option("sam", {"rho": 0.1}, option, x, y)


def test_metrics_reset_each_epoch_and_evaluate():
    check_metrics_reset("sam", None, ["loss", "accuracy"])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_without_nan(policy):
    x, y = blobs()
    check_mixed_precision("sam", {"rho": 0.05}, policy, x, y)


def test_mixed_float16_update_matches_float32():
    """Under loss scaling the step follows the float32 one.

    With ``eps`` as large as the gradient norm, the perturbation depends on the
    gradient's magnitude, so a loss scale left in the first gradient (256x
    here) would move the perturbed point and the update.
    """
    x, y = blobs(n=32)
    deltas = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(5)
        model = classifier("sam", {"rho": 0.5, "eps": 1.0})
        optimizer = keras.optimizers.SGD(1.0)
        if policy == "mixed_float16":
            # A fixed, moderate scale: no overflow, so no step is skipped.
            optimizer = keras.optimizers.LossScaleOptimizer(
                optimizer, initial_scale=256.0, dynamic_growth_steps=1000
            )
        model.compile(optimizer, "sparse_categorical_crossentropy")
        start = [v.numpy().copy() for v in model.trainable_weights]
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        deltas[policy] = np.concatenate(
            [
                (v.numpy() - s).ravel()
                for v, s in zip(model.trainable_weights, start, strict=True)
            ]
        )
    exact, half = deltas["float32"], deltas["mixed_float16"]
    assert np.linalg.norm(exact) > 1e-2
    assert np.linalg.norm(half - exact) < 2e-2 * np.linalg.norm(exact)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": -1}, "rho"),
        ({"eps": 0}, "eps"),
        ({"radius": 1}, "radius"),
    ],
)
def test_bad_options_name_step_and_field(options, field):
    check_bad_option("sam", options, field)


def test_model_without_trainable_weights_is_an_error():
    x, y = blobs(n=8)
    model = classifier("sam")
    model.trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(keras_steps.StepError, match="no trainable weights"):
        model.fit(x, y, epochs=1, verbose=0)


def test_demo_writes_accuracy_curves(tmp_path):
    from keras_steps_plugins import sam

    check_demo(sam, tmp_path)
