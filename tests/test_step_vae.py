import math

import keras
import numpy as np
import pytest
from keras import layers
from step_checks import OPTIMIZER_CHECKS, check_pngs, spy_on_scale_loss

import keras_steps
from keras_steps import OptionsError, StepError, StepModel

LATENT, FEATURES = 2, 16


def make_data(n=256, seed=0):
    """Points in [0, 1]^16 on a 2-D manifold: a VAE with a 2-D latent fits them."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, LATENT))
    proj = rng.normal(size=(LATENT, FEATURES)) * 2.0
    return (1.0 / (1.0 + np.exp(-(latent @ proj)))).astype("float32")


def make_networks(outputs="sigmoid", log_var_bias=None, encoder_outputs=None):
    inputs = keras.Input((FEATURES,))
    h = layers.Dense(32, activation="relu")(inputs)
    z_mean = layers.Dense(LATENT, name="z_mean")(h)
    if log_var_bias is None:
        z_log_var = layers.Dense(LATENT, name="z_log_var")(h)
    else:
        # A (nearly) zero variance makes z == z_mean, so losses are deterministic.
        z_log_var = layers.Dense(
            LATENT,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(log_var_bias),
            trainable=False,
        )(h)
    outs = (encoder_outputs or (lambda m, v: [m, v]))(z_mean, z_log_var)
    encoder = keras.Model(inputs, outs, name="encoder")
    z = keras.Input((LATENT,))
    h = layers.Dense(32, activation="relu")(z)
    activation = "sigmoid" if outputs == "sigmoid" else None
    decoder = keras.Model(
        z, layers.Dense(FEATURES, activation=activation)(h), name="decoder"
    )
    return encoder, decoder


def make_vae(options=None, optimizer=None, seed=1337, **network_kwargs):
    keras.utils.set_random_seed(seed)
    encoder, decoder = make_networks(**network_kwargs)
    vae = StepModel(
        models={"encoder": encoder, "decoder": decoder},
        step="vae",
        step_options=options,
    )
    vae.compile(optimizer=optimizer or keras.optimizers.Adam(1e-2))
    return vae


def mse(vae, x):
    return float(np.mean((vae.predict(x, verbose=0) - x) ** 2))


@pytest.mark.parametrize(
    "options",
    [
        {"seed": 0},
        # Summed squared errors of values in [0, 1] are small next to the KL
        # term (a unit-variance Gaussian likelihood): weigh the KL down.
        {"reconstruction": "mse", "kl_weight": 0.01, "seed": 0},
        {"from_logits": True, "seed": 0},
    ],
    ids=["bce", "mse", "bce-logits"],
)
def test_trains_reconstructions_improve(options):
    x = make_data()
    outputs = None if options.get("from_logits") else "sigmoid"
    vae = make_vae(options, outputs=outputs)
    before = mse(vae, x)
    history = vae.fit(x, epochs=25, batch_size=32, verbose=0).history
    after = mse(vae, x)
    assert after < 0.3 * before, (before, after)
    assert history["loss"][-1] < history["loss"][0]
    assert set(history) == {"loss", "reconstruction_loss", "kl_loss"}
    assert all(math.isfinite(v) and v > 0 for v in history["kl_loss"])
    # The latent code carries information: the posterior did not collapse.
    assert history["kl_loss"][-1] > 0.5


def test_losses_match_the_keras_vae_example():
    keras.utils.set_random_seed(0)
    x = make_data(64)
    vae = make_vae({"kl_weight": 0.5}, log_var_bias=-40.0)
    results = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)

    z_mean, z_log_var = (
        keras.ops.convert_to_numpy(t) for t in vae.models["encoder"](x)
    )
    recon = vae.models["decoder"](z_mean)
    # The Keras VAE example: bce averaged over the last axis, summed over the rest.
    expected_recon = float(
        np.mean(keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(x, recon)))
        * FEATURES
    )
    expected_kl = float(
        np.mean(np.sum(-0.5 * (1 + z_log_var - z_mean**2 - np.exp(z_log_var)), axis=1))
    )
    assert results["reconstruction_loss"] == pytest.approx(expected_recon, rel=1e-4)
    assert results["kl_loss"] == pytest.approx(expected_kl, rel=1e-4)
    assert results["loss"] == pytest.approx(
        expected_recon + 0.5 * expected_kl, rel=1e-4
    )

    vae.step_options.reconstruction_reduction = "mean"
    mean = vae.evaluate(x, batch_size=64, verbose=0, return_dict=True)
    assert mean["reconstruction_loss"] == pytest.approx(
        expected_recon / FEATURES, rel=1e-4
    )


def test_sample_weight_weights_examples():
    x = make_data(64)
    vae = make_vae({"reconstruction": "mse"}, log_var_bias=-40.0)
    half = vae.evaluate(x[:32], batch_size=64, verbose=0, return_dict=True)
    weights = np.r_[np.ones(32), np.zeros(32)].astype("float32")
    weighted = vae.evaluate(
        x, x, sample_weight=weights, batch_size=64, verbose=0, return_dict=True
    )
    for name in ("loss", "reconstruction_loss", "kl_loss"):
        # Keras's rule: sum of weighted losses over the batch size.
        assert weighted[name] == pytest.approx(0.5 * half[name], rel=1e-4)
    # Without y the target is x, and the weights still count (Keras alone
    # would drop them with the missing targets).
    without_y = vae.evaluate(
        x, sample_weight=weights, batch_size=64, verbose=0, return_dict=True
    )
    assert without_y == pytest.approx(weighted, rel=1e-6)


def test_fit_without_y_is_weighted_by_sample_weight():
    """fit(x, sample_weight=w) trains exactly as fit(x, x, sample_weight=w)."""
    x = make_data(64)
    weights = np.linspace(0.0, 2.0, 64).astype("float32")
    runs = []
    for target in (None, x):
        vae = make_vae({"seed": 1})
        history = vae.fit(
            x, target, sample_weight=weights, batch_size=16, epochs=2,
            shuffle=False, verbose=0, validation_data=(x, None, weights),
        )
        runs.append(history.history)
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        np.testing.assert_allclose(runs[0][key], runs[1][key], rtol=1e-6, err_msg=key)
    vae = make_vae({"seed": 1})
    unweighted = vae.fit(x, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    assert abs(unweighted["loss"][-1] - runs[0]["loss"][-1]) > 1e-3


def test_sample_weight_must_be_per_example():
    x = make_data(8)
    vae = make_vae()
    with pytest.raises(StepError, match=r"'vae' takes one sample_weight per example"):
        vae.train_on_batch(x, x, sample_weight=np.ones((8, 2), "float32"))


def test_regularization_losses_count():
    x = make_data(32)
    vae = make_vae({"reconstruction": "mse"}, log_var_bias=-40.0)
    plain = vae.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    dense = vae.models["decoder"].layers[1]
    dense.kernel_regularizer = keras.regularizers.L2(0.1)
    dense.kernel.regularizer = dense.kernel_regularizer
    penalty = 0.1 * float(np.sum(keras.ops.convert_to_numpy(dense.kernel) ** 2))
    reg = vae.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    assert reg["loss"] == pytest.approx(plain["loss"] + penalty, rel=1e-4)
    assert reg["reconstruction_loss"] == pytest.approx(
        plain["reconstruction_loss"], rel=1e-6
    )


def test_y_is_the_reconstruction_target():
    x = make_data(32)
    vae = make_vae(log_var_bias=-40.0)
    same = vae.evaluate(x, x, batch_size=32, verbose=0, return_dict=True)
    alone = vae.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    other = vae.evaluate(x, 1.0 - x, batch_size=32, verbose=0, return_dict=True)
    assert same["reconstruction_loss"] == pytest.approx(alone["reconstruction_loss"])
    assert other["reconstruction_loss"] != pytest.approx(alone["reconstruction_loss"])
    with pytest.raises(
        StepError, match=r"decoder returned a tensor of shape \(32, 16\).*\(32, 3\)"
    ):
        vae.evaluate(x, x[:, :3], batch_size=32, verbose=0)


def test_seed_makes_runs_repeatable():
    x = make_data(64)

    def run(seed):
        return (
            make_vae({"seed": seed}).fit(x, epochs=2, batch_size=16, verbose=0).history
        )

    assert run(3) == run(3)
    assert run(3)["loss"] != run(4)["loss"]


def test_predict_is_deterministic_decoder_of_z_mean():
    x = make_data(16)
    vae = make_vae()
    vae.fit(x, epochs=1, batch_size=8, verbose=0)
    pred = vae.predict(x, verbose=0)
    np.testing.assert_array_equal(pred, vae.predict(x, verbose=0))
    z_mean, _ = vae.models["encoder"](x)
    expected = keras.ops.convert_to_numpy(vae.models["decoder"](z_mean))
    np.testing.assert_allclose(pred, expected, rtol=1e-6)


def test_predict_applies_sigmoid_to_logits():
    x = make_data(16)
    vae = make_vae({"from_logits": True}, outputs=None)
    z_mean, _ = vae.models["encoder"](x)
    logits = keras.ops.convert_to_numpy(vae.models["decoder"](z_mean))
    np.testing.assert_allclose(
        vae.predict(x, verbose=0), 1 / (1 + np.exp(-logits)), rtol=1e-5
    )


def test_evaluate_does_not_update_weights():
    x = make_data(32)
    vae = make_vae()
    before = [w.numpy().copy() for w in vae.weights]
    results = vae.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    assert set(results) == {"loss", "reconstruction_loss", "kl_loss"}
    assert all(
        np.array_equal(b, w.numpy()) for b, w in zip(before, vae.weights, strict=True)
    )


def test_encoder_dict_outputs_work():
    x = make_data(16)
    vae = make_vae(encoder_outputs=lambda m, v: {"z_mean": m, "z_log_var": v})
    assert math.isfinite(vae.evaluate(x, verbose=0, return_dict=True)["loss"])


@pytest.mark.parametrize(
    ("encoder_outputs", "message"),
    [
        (lambda m, v: [m, v, m], r"returned a list of 3.*drop the sampling"),
        (lambda m, v: m, r"returned a tensor of shape \(16, 2\)"),
        (
            lambda m, v: [m, layers.Dense(3)(v)],
            r"same shape; got \(16, 2\) and \(16, 3\)",
        ),
    ],
    ids=["three-outputs", "one-output", "shape-mismatch"],
)
def test_encoder_contract_errors(encoder_outputs, message):
    x = make_data(16)
    vae = make_vae(encoder_outputs=encoder_outputs)
    with pytest.raises(StepError, match=r"Step 'vae': the encoder") as info:
        vae.train_on_batch(x)
    assert info.match(message)


def test_compiled_loss_is_rejected_at_compile():
    vae = make_vae()
    with pytest.raises(
        keras_steps.ArgumentError,
        match=r"'vae' .* does not take loss .*got loss='mse'.*computes its own loss",
    ):
        vae.compile(optimizer="adam", loss="mse")


def test_compiled_metrics_compare_target_and_reconstruction():
    x = make_data(32)
    vae = make_vae(log_var_bias=-40.0)
    vae.compile(optimizer="adam", metrics=["mse"])
    results = vae.evaluate(x, x, batch_size=32, verbose=0, return_dict=True)
    assert results["mse"] == pytest.approx(mse(vae, x), rel=1e-4)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"kl_weight": float("inf")}, "kl_weight"),
        ({"reconstruction": "l1"}, "reconstruction"),
        ({"reconstruction_reduction": "max"}, "reconstruction_reduction"),
        ({"seed": -1}, "seed"),
        ({"from_logits": True, "reconstruction": "mse"}, "from_logits=True needs"),
        ({"beta": 2.0}, "beta"),
    ],
)
def test_option_errors_name_step_and_field(options, field):
    with pytest.raises(OptionsError, match="step 'vae'") as info:
        make_vae(options)
    assert field in str(info.value)


def test_kl_weight_can_change_during_training():
    x = make_data(64)
    vae = make_vae()

    def warm_up(epoch, logs):
        vae.step_options.kl_weight = 0.0 if epoch == 0 else 1.0

    history = vae.fit(
        x,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=warm_up)],
    ).history
    assert history["loss"][0] == pytest.approx(
        history["reconstruction_loss"][0], rel=1e-6
    )
    assert history["loss"][1] == pytest.approx(
        history["reconstruction_loss"][1] + history["kl_loss"][1], rel=1e-5
    )


def test_metrics_reset_each_epoch_and_at_evaluate():
    x = make_data(48)
    vae = make_vae()
    counts = []

    def record(batch, logs):
        if batch == 0:
            counts.append([float(m.count) for m in vae.metrics])

    vae.fit(
        x,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=record)],
    )
    # After the first batch of every epoch each tracker holds that batch only.
    assert counts == [[16.0, 16.0, 16.0]] * 3
    vae.evaluate(x[:16], verbose=0)
    assert [float(m.count) for m in vae.metrics] == [16.0, 16.0, 16.0]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_scales_the_loss(policy, monkeypatch):
    keras.config.set_dtype_policy(policy)
    x = make_data()
    vae = make_vae({"seed": 0})
    optimizer = vae.optimizers["model"]
    if policy == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    scaled = spy_on_scale_loss(monkeypatch, optimizer)
    before = mse(vae, x)
    history = vae.fit(x, epochs=10, batch_size=32, verbose=0).history
    assert scaled == ["float32"] * 10 * 8
    assert all(math.isfinite(v) for values in history.values() for v in values)
    assert mse(vae, x) < 0.3 * before


def _build(make_optimizer):
    return make_vae(optimizer=make_optimizer())


def _fit(model, callbacks, steps=4):
    model.fit(
        make_data(16 * steps), epochs=1, batch_size=16, verbose=0, callbacks=callbacks
    )


@pytest.mark.parametrize("option", sorted(OPTIMIZER_CHECKS))
def test_optimizer_options_work_unchanged(option):
    OPTIMIZER_CHECKS[option](_build, _fit)


def test_step_is_listed_with_its_roles():
    step = keras_steps.get_step("vae")
    assert step.model_roles == ("encoder", "decoder")
    assert step.optimizer_roles == ("model",)
    assert step.summary.startswith("Variational autoencoder")


def test_demo_writes_pictures(tmp_path):
    demo = keras_steps.get_step("vae").hooks["step_demo"]
    sizes = {"reconstructions": (800, 320), "samples": (800, 160), "curves": (480, 320)}
    check_pngs(demo(tmp_path, 1, 2), sizes)
