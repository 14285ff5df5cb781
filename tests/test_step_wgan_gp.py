"""The ``wgan-gp`` step: critic loss with a double-backward gradient penalty."""

import keras
import numpy as np
import pytest
import torch
from _gan_testing import (
    LATENTS_4,
    assert_moves_toward,
    check_bad_option,
    check_png,
    fit_points,
    gaussian_2d,
    mlp,
)
from keras_steps_plugins import wgan_gp as wgan_gp_module
from step_checks import OPTIMIZER_CHECKS

import keras_steps

ROLES = ("generator", "critic")
METRICS = {"d_loss", "g_loss", "gp", "wasserstein"}


def point_wgan(optimizer=None, **options):
    """A WGAN-GP on 2-D points; ``optimizer()`` makes each role's optimizer.

    The generator is linear, which can match a Gaussian exactly: its samples
    then approach the data steadily instead of circling it, as an MLP
    generator's do at learning rates that fit a test's budget.
    """
    if optimizer is None:

        def optimizer():
            return keras.optimizers.Adam(3e-2, beta_1=0.5, beta_2=0.9)

    generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model = keras_steps.StepModel(
        models={"generator": generator, "critic": mlp(2, 1, "critic")},
        step="wgan-gp",
        step_options={"latent_dim": 4, **options},
    )
    model.compile(optimizer={role: optimizer() for role in ROLES})
    return model


def sgd_wgan(options=None, **kwargs):
    """One critic update per batch, with SGD(**kwargs) for both roles."""
    return point_wgan(
        optimizer=lambda: keras.optimizers.SGD(**kwargs), d_steps=1, **(options or {})
    )


# -- the penalty's gradient reaches the critic's update -------------------------
def torch_critic(weights):
    """The critic ``mlp`` as plain float64 torch functions of its weights."""
    w1, b1, w2, b2, w3, b3 = weights

    def critic(x):
        h = torch.nn.functional.leaky_relu(x @ w1 + b1, 0.2)
        h = torch.nn.functional.leaky_relu(h @ w2 + b2, 0.2)
        return h @ w3 + b3

    return critic


def test_critic_update_is_the_gradient_of_the_full_loss():
    """One SGD(lr=1) critic update equals minus the gradient of
    ``mean C(fake) - mean C(real) + gp_weight * gp`` computed independently in
    float64, the penalty's second-order term included."""
    x = gaussian_2d(32)
    model = sgd_wgan(learning_rate=1.0)
    critic_before = model.models["critic"].get_weights()
    # The step's draws, replayed: latents, then the interpolation weights.
    stream = keras.random.SeedGenerator(1337)
    latents = keras.random.normal((32, 4), seed=stream)
    alpha = keras.random.uniform((32, 1), seed=stream)
    fake = keras.ops.convert_to_numpy(model.models["generator"](latents))

    model.train_on_batch(x)
    applied = [
        a - b
        for a, b in zip(
            critic_before, model.models["critic"].get_weights(), strict=True
        )
    ]

    params = [
        torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in critic_before
    ]
    critic = torch_critic(params)
    real = torch.tensor(x, dtype=torch.float64)
    fake = torch.tensor(fake, dtype=torch.float64)
    alpha = torch.tensor(keras.ops.convert_to_numpy(alpha), dtype=torch.float64)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (slope,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    gp = ((slope.norm(dim=1) - 1) ** 2).mean()
    critic_loss = critic(fake).mean() - critic(real).mean()
    full = torch.autograd.grad(critic_loss + 10.0 * gp, params, retain_graph=True)
    for got, want in zip(applied, full, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    # Without the double backward the penalty would add nothing: the update
    # would be the Wasserstein term's gradient alone, far from what happened.
    first_order = torch.autograd.grad(critic_loss, params)
    assert (
        max(
            np.abs(got - want.numpy()).max()
            for got, want in zip(applied, first_order, strict=True)
        )
        > 1e-2
    )
    np.testing.assert_allclose(
        float(model.step_state["gp"].result()), float(gp), rtol=1e-4
    )


def test_gp_weight_zero_changes_the_update():
    x = gaussian_2d(32)
    with_gp = sgd_wgan(learning_rate=1.0)
    without = sgd_wgan({"gp_weight": 0.0}, learning_rate=1.0)
    without.set_weights(with_gp.get_weights())
    with_gp.train_on_batch(x)
    without.train_on_batch(x)
    assert not all(
        np.allclose(a, b)
        for a, b in zip(
            with_gp.models["critic"].get_weights(),
            without.models["critic"].get_weights(),
            strict=True,
        )
    )


# -- training for real ------------------------------------------------------------
def test_samples_move_toward_the_data_and_the_penalty_falls():
    x = gaussian_2d(192)
    model = point_wgan()
    history = {}

    def fit():
        history.update(model.fit(x, batch_size=64, epochs=24, verbose=0).history)

    assert_moves_toward(model, x, fit)
    assert set(history) == METRICS
    # The critic's slope is pulled toward 1 where it is penalised.
    assert np.mean(history["gp"][-3:]) < 0.25 * history["gp"][0], history["gp"]


def test_d_steps_draws_and_updates():
    """d_steps=3: three (latents, alpha) pairs and critic updates, then one
    generator update, per batch."""
    x = gaussian_2d(128)
    model = point_wgan(d_steps=3)
    model.fit(x, batch_size=32, epochs=1, verbose=0)
    batches = 4
    state = keras.ops.convert_to_numpy(model.step_state["seed_generator"].state)
    assert state[1] == batches * (2 * 3 + 1)
    assert int(model.optimizers["critic"].iterations) == batches * 3
    assert int(model.optimizers["generator"].iterations) == batches


def test_metrics_reset_each_epoch_and_at_evaluate():
    x = gaussian_2d(128)
    model = point_wgan(d_steps=2)
    model.fit(x, batch_size=32, epochs=2, verbose=0)
    # Epoch 2 only: 4 batches, 2 critic updates each.
    assert float(model.step_state["d_loss"].count) == 8
    assert float(model.step_state["g_loss"].count) == 4
    model.evaluate(x, batch_size=64, verbose=0)
    assert float(model.step_state["d_loss"].count) == 2


# -- evaluate() and predict() -----------------------------------------------------
def test_predict_returns_generated_samples():
    model = point_wgan()
    samples = model.predict(LATENTS_4[:10], batch_size=4, verbose=0)
    assert samples.shape == (10, 2)
    np.testing.assert_allclose(
        samples,
        keras.ops.convert_to_numpy(model.models["generator"](LATENTS_4[:10])),
        rtol=1e-6,
        atol=1e-6,
    )


def test_evaluate_is_reproducible_and_leaves_training_alone():
    x = gaussian_2d(128)
    model = point_wgan()
    model.fit(x, batch_size=64, epochs=1, verbose=0)
    train_state = keras.ops.convert_to_numpy(model.step_state["seed_generator"].state)
    first = model.evaluate(x, batch_size=64, return_dict=True, verbose=0)
    second = model.evaluate(x, batch_size=64, return_dict=True, verbose=0)
    assert set(first) == METRICS
    assert first == second
    assert all(np.isfinite(v) for v in first.values())
    assert first["gp"] >= 0
    np.testing.assert_allclose(
        first["d_loss"], -first["wasserstein"] + 10.0 * first["gp"], rtol=1e-5
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.step_state["seed_generator"].state),
        train_state,
    )


# -- mixed precision --------------------------------------------------------------
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains(policy):
    keras.config.set_dtype_policy(policy)
    x = gaussian_2d(192)
    model = point_wgan()
    wrapped = policy == "mixed_float16"
    for role in ROLES:
        assert (
            isinstance(model.optimizers[role], keras.optimizers.LossScaleOptimizer)
            == wrapped
        )
    assert_moves_toward(
        model, x, lambda: model.fit(x, batch_size=64, epochs=24, verbose=0)
    )


# -- keras.optimizers options work unchanged ----------------------------------
@pytest.mark.parametrize("option", sorted(OPTIMIZER_CHECKS))
def test_optimizer_options_apply_to_both_networks(option):
    # One critic update per batch, so that the checks' per-batch bounds hold.
    OPTIMIZER_CHECKS[option](
        lambda make_optimizer: point_wgan(optimizer=make_optimizer, d_steps=1), fit_points
    )


# -- options ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, field",
    [
        ({"d_steps": 0}, "d_steps"),
        ({"gp_weight": -1.0}, "gp_weight"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"seed": -1}, "seed"),
        ({"label_noise": 0.1}, "label_noise"),
    ],
)
def test_bad_options_name_step_and_field(options, field):
    models = {"generator": mlp(4, 2, "g"), "critic": mlp(2, 1, "c")}
    check_bad_option("wgan-gp", models, options, field)


def test_defaults_follow_the_paper():
    options = keras_steps.get_step("wgan-gp").validate_options(None)
    assert options.d_steps == 5
    assert options.gp_weight == 10.0


# -- the demo -----------------------------------------------------------------------
def test_demo_writes_samples_and_curves(tmp_path):
    files = wgan_gp_module.step_demo(tmp_path, 1, 2)
    assert set(files) == {"samples", "curves"}
    check_png(files["samples"], (640, 320))
    check_png(files["curves"], (480, 320))
