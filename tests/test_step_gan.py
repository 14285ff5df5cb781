"""The ``gan`` step: the seed guide's GAN, reproduced, and training for real."""

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
    snapshot,
)
from keras import layers
from keras_steps_plugins import gan as gan_module
from step_checks import OPTIMIZER_CHECKS

import keras_steps

LATENT = 8
ROLES = ("generator", "discriminator")


# -- the reference: the seed guide's GAN class, as the guide writes it ----------
class SeedGAN(keras.Model):
    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)
        self.built = True

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    def train_step(self, real_images):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(real_images, (tuple, list)):
            real_images = real_images[0]
        batch_size = real_images.shape[0]
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )
        generated_images = self.generator(random_latent_vectors)
        real_images = torch.tensor(real_images, device=device)
        combined_images = torch.concat([generated_images, real_images], axis=0)
        labels = torch.concat(
            [
                torch.ones((batch_size, 1), device=device),
                torch.zeros((batch_size, 1), device=device),
            ],
            axis=0,
        )
        labels += 0.05 * keras.random.uniform(labels.shape, seed=self.seed_generator)
        self.zero_grad()
        predictions = self.discriminator(combined_images)
        d_loss = self.loss_fn(labels, predictions)
        d_loss.backward()
        grads = [v.value.grad for v in self.discriminator.trainable_weights]
        with torch.no_grad():
            self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )
        misleading_labels = torch.zeros((batch_size, 1), device=device)
        self.zero_grad()
        predictions = self.discriminator(self.generator(random_latent_vectors))
        g_loss = self.loss_fn(misleading_labels, predictions)
        grads = g_loss.backward()
        grads = [v.value.grad for v in self.generator.trainable_weights]
        with torch.no_grad():
            self.g_optimizer.apply(grads, self.generator.trainable_weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {
            "d_loss": self.d_loss_tracker.result(),
            "g_loss": self.g_loss_tracker.result(),
        }


class RecordingSeedGAN(SeedGAN):
    """The reference, also keeping each batch's own discriminator loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.raw_d = []

    def train_step(self, real_images):
        d_before = self.d_loss_tracker.result()
        out = super().train_step(real_images)
        # Mean of n values, one added: recover the batch's own loss.
        n = float(self.d_loss_tracker.count)
        self.raw_d.append(n * float(out["d_loss"]) - (n - 1) * float(d_before))
        return out


# -- small networks in the seed's shape (conv generator, conv discriminator) -----
def small_conv_networks():
    generator = keras.Sequential(
        [
            keras.Input(shape=(LATENT,)),
            layers.Dense(4 * 4 * 8),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Reshape((4, 4, 8)),
            layers.Conv2DTranspose(8, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(1, (3, 3), padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
    discriminator = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            layers.Conv2D(8, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.GlobalMaxPooling2D(),
            layers.Dense(1),
        ],
        name="discriminator",
    )
    return generator, discriminator


def copies(*networks):
    out = []
    for net in networks:
        twin = keras.models.clone_model(net)
        twin.set_weights(net.get_weights())
        out.append(twin)
    return out


def tiny_images(n=64):
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 1.0, size=(n, 8, 8, 1)).astype("float32")


def gan_model(generator, discriminator, lr=3e-4, loss=None, **options):
    model = keras_steps.StepModel(
        models={"generator": generator, "discriminator": discriminator},
        step="gan",
        step_options={"latent_dim": LATENT, **options},
    )
    model.compile(
        optimizer={
            "generator": keras.optimizers.Adam(lr),
            "discriminator": keras.optimizers.Adam(lr),
        },
        # The seed's compile(loss_fn=...), moved to Keras's own argument.
        **({} if loss is None else {"loss": loss}),
    )
    return model


class BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append((float(logs["d_loss"]), float(logs["g_loss"])))


def fit_both(epochs=2, batch_size=16, reference_cls=SeedGAN, loss=None, **fit_kwargs):
    x = tiny_images()
    generator, discriminator = small_conv_networks()
    ref_g, ref_d = copies(generator, discriminator)
    reference = reference_cls(discriminator=ref_d, generator=ref_g, latent_dim=LATENT)
    reference.compile(
        d_optimizer=keras.optimizers.Adam(3e-4),
        g_optimizer=keras.optimizers.Adam(3e-4),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model = gan_model(generator, discriminator, loss=loss)
    logs = {"ref": BatchLogs(), "step": BatchLogs()}
    kw = dict(batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    kw.update(fit_kwargs)
    with pytest.warns(UserWarning, match="copy construct"):
        ref_hist = reference.fit(x, callbacks=[logs["ref"]], **kw)
    step_hist = model.fit(x, callbacks=[logs["step"]], **kw)
    return reference, model, ref_hist, step_hist, logs


# Measured: the step and the seed agree bit for bit on this CPU; the tolerance
# leaves room for other BLAS kernels, not for a different algorithm.
RTOL, ATOL = 1e-6, 1e-7


@pytest.mark.parametrize(
    "loss",
    [None, keras.losses.BinaryCrossentropy(from_logits=True)],
    ids=["default-loss", "compile-loss"],
)
def test_matches_the_seed_gan_batch_by_batch(loss):
    """The seed ported as is, or with its loss_fn given as compile(loss=...)."""
    reference, model, ref_hist, step_hist, logs = fit_both(epochs=2, loss=loss)
    ref_logs = np.array(logs["ref"].logs)
    step_logs = np.array(logs["step"].logs)
    assert ref_logs.shape == step_logs.shape == (8, 2)
    np.testing.assert_allclose(step_logs, ref_logs, rtol=RTOL, atol=ATOL)
    for key in ("d_loss", "g_loss"):
        np.testing.assert_allclose(
            step_hist.history[key], ref_hist.history[key], rtol=RTOL, atol=ATOL
        )
    # The weights the two end with agree too, so the match is not only in the logs.
    for ours, theirs in (
        (model.models["generator"], reference.generator),
        (model.models["discriminator"], reference.discriminator),
    ):
        for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Same number of draws from the same stream: the seed states agree.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.step_state["seed_generator"].state),
        keras.ops.convert_to_numpy(reference.seed_generator.state),
    )


def test_differs_from_the_seed_when_the_stream_differs():
    """The equivalence test can fail: another seed gives other losses."""
    x = tiny_images()
    generator, discriminator = small_conv_networks()
    a = gan_model(*copies(generator, discriminator))
    b = gan_model(*copies(generator, discriminator), seed=7)
    ha = a.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    hb = b.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    assert abs(ha["d_loss"][0] - hb["d_loss"][0]) > 1e-4


def test_metrics_reset_each_epoch():
    reference, _, _, step_hist, _ = fit_both(epochs=3, reference_cls=RecordingSeedGAN)
    raw_d = np.array(reference.raw_d).reshape(3, 4)
    np.testing.assert_allclose(
        step_hist.history["d_loss"], raw_d.mean(axis=1), rtol=1e-5, atol=1e-6
    )
    # Not the running mean over all epochs, which a missing reset would give.
    assert not np.allclose(step_hist.history["d_loss"][2], raw_d.mean(), atol=1e-6)


def test_seed_networks_match_the_seed_too():
    """The guide's own 28x28 architecture, two batches: still the seed's numbers."""
    x = np.random.default_rng(1).uniform(size=(16, 28, 28, 1)).astype("float32")
    generator, discriminator = gan_module.seed_networks(latent_dim=128)
    ref_g, ref_d = copies(generator, discriminator)
    reference = SeedGAN(discriminator=ref_d, generator=ref_g, latent_dim=128)
    reference.compile(
        d_optimizer=keras.optimizers.Adam(3e-4),
        g_optimizer=keras.optimizers.Adam(3e-4),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model = gan_model(generator, discriminator, latent_dim=128)
    logs = {"ref": BatchLogs(), "step": BatchLogs()}
    with pytest.warns(UserWarning, match="copy construct"):
        reference.fit(
            x, batch_size=8, shuffle=False, verbose=0, callbacks=[logs["ref"]]
        )
    model.fit(x, batch_size=8, shuffle=False, verbose=0, callbacks=[logs["step"]])
    np.testing.assert_allclose(
        logs["step"].logs, logs["ref"].logs, rtol=RTOL, atol=ATOL
    )


# -- training for real ---------------------------------------------------------
def point_gan(optimizer=None, **options):
    """A GAN on 2-D points; ``optimizer()`` makes each role's optimizer."""
    if optimizer is None:

        def optimizer():
            return keras.optimizers.Adam(2e-3, beta_1=0.5)

    model = keras_steps.StepModel(
        models={"generator": mlp(4, 2, "generator"), "discriminator": mlp(2, 1, "d")},
        step="gan",
        step_options={"latent_dim": 4, **options},
    )
    model.compile(optimizer={role: optimizer() for role in ROLES})
    return model


def test_samples_move_toward_the_data():
    x = gaussian_2d()
    model = point_gan()
    assert_moves_toward(
        model, x, lambda: model.fit(x, batch_size=64, epochs=30, verbose=0)
    )


def test_d_steps_draws_and_updates():
    """d_steps=3: three (latents, noise) pairs and updates, then the generator's."""
    x = gaussian_2d(128)
    model = point_gan(d_steps=3)
    model.fit(x, batch_size=32, epochs=1, verbose=0)
    batches = 4
    state = keras.ops.convert_to_numpy(model.step_state["seed_generator"].state)
    assert state[1] == batches * (2 * 3 + 1)
    assert int(model.optimizers["discriminator"].iterations) == batches * 3
    assert int(model.optimizers["generator"].iterations) == batches
    assert float(model.step_state["d_loss"].count) == batches * 3


# -- evaluate() and predict() ---------------------------------------------------
def test_predict_returns_generated_images():
    generator, discriminator = small_conv_networks()
    model = gan_model(generator, discriminator)
    z = np.random.default_rng(2).normal(size=(10, LATENT)).astype("float32")
    images = model.predict(z, batch_size=4, verbose=0)
    assert images.shape == (10, 8, 8, 1)
    np.testing.assert_allclose(
        images, keras.ops.convert_to_numpy(generator(z)), rtol=1e-6, atol=1e-6
    )
    assert images.min() >= 0.0 and images.max() <= 1.0  # the sigmoid output


def test_evaluate_losses_are_reproducible_and_leave_training_alone():
    x = tiny_images(32)
    generator, discriminator = small_conv_networks()
    model = gan_model(generator, discriminator)
    train_state = keras.ops.convert_to_numpy(model.step_state["seed_generator"].state)
    first = model.evaluate(x, batch_size=8, return_dict=True, verbose=0)
    second = model.evaluate(x, batch_size=8, return_dict=True, verbose=0)
    assert set(first) == {"d_loss", "g_loss"}
    assert first == second
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.step_state["seed_generator"].state),
        train_state,
    )
    # The same numbers by hand: latents from the evaluation stream, clean labels.
    stream = keras.random.SeedGenerator(1337 + 2**30)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    labels = np.concatenate([np.ones((8, 1)), np.zeros((8, 1))])
    d_losses, g_losses = [], []
    with torch.no_grad():
        for i in range(0, 32, 8):
            fake = generator(keras.random.normal((8, LATENT), seed=stream))
            p_fake = discriminator(fake)
            p_real = discriminator(x[i : i + 8])
            d_losses.append(float(bce(labels, keras.ops.concatenate([p_fake, p_real]))))
            g_losses.append(float(bce(np.zeros((8, 1)), p_fake)))
    np.testing.assert_allclose(first["d_loss"], np.mean(d_losses), rtol=1e-5)
    np.testing.assert_allclose(first["g_loss"], np.mean(g_losses), rtol=1e-5)


def test_evaluate_tracks_training():
    """A trained discriminator separates real from generated better than at start."""
    x = gaussian_2d()
    model = point_gan()
    model.fit(x, batch_size=64, epochs=2, verbose=0)
    early = model.evaluate(x, batch_size=128, return_dict=True, verbose=0)
    # Freeze the generator: the discriminator alone then learns to win.
    model.optimizers["generator"].learning_rate.assign(0.0)
    model.fit(x, batch_size=64, epochs=10, verbose=0)
    late = model.evaluate(x, batch_size=128, return_dict=True, verbose=0)
    assert late["d_loss"] < early["d_loss"] - 0.1, (early, late)
    assert late["g_loss"] > early["g_loss"], (early, late)


def test_validation_data_gives_val_metrics():
    x = gaussian_2d(256)
    model = point_gan()
    history = model.fit(
        x[:192], validation_data=(x[192:],), batch_size=64, epochs=2, verbose=0
    )
    assert set(history.history) == {"d_loss", "g_loss", "val_d_loss", "val_g_loss"}


# -- mixed precision -------------------------------------------------------------
def test_mixed_float16_wraps_both_optimizers_and_trains():
    keras.config.set_dtype_policy("mixed_float16")
    x = gaussian_2d()
    model = point_gan()
    for role in ROLES:
        assert isinstance(
            model.optimizers[role], keras.optimizers.LossScaleOptimizer
        ), role
    assert keras.backend.standardize_dtype(model.predict(LATENTS_4[:2]).dtype) == (
        "float16"
    )
    assert_moves_toward(
        model, x, lambda: model.fit(x, batch_size=64, epochs=30, verbose=0)
    )


def test_mixed_float16_scales_both_losses():
    """A loss scale of 2**40 overflows float16 gradients, but only if it is applied.

    Each role's LossScaleOptimizer then skips the update and halves its
    scale; an unscaled loss would leave both the scale and the skip unseen.
    """
    keras.config.set_dtype_policy("mixed_float16")
    x = gaussian_2d(64)
    model = point_gan()
    for role in ROLES:
        model.optimizers[role].dynamic_scale.assign(2.0**40)
    before = snapshot(model)
    model.train_on_batch(x)
    for role in ROLES:
        assert float(model.optimizers[role].dynamic_scale) == 2.0**39, role
        for a, b in zip(before[role], model.models[role].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # The scale falls until the gradients fit in float16; then updates resume.
    model.fit(x, batch_size=64, epochs=40, verbose=0)
    after = snapshot(model)
    for role in ROLES:
        assert float(model.optimizers[role].dynamic_scale) < 2.0**20, role
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(before[role], after[role], strict=True)
        ), role


def test_mixed_bfloat16_trains():
    keras.config.set_dtype_policy("mixed_bfloat16")
    x = gaussian_2d()
    model = point_gan()
    for role in ROLES:
        assert not isinstance(
            model.optimizers[role], keras.optimizers.LossScaleOptimizer
        )
    assert_moves_toward(
        model, x, lambda: model.fit(x, batch_size=64, epochs=30, verbose=0)
    )


# -- keras.optimizers options work unchanged ----------------------------------
@pytest.mark.parametrize("option", sorted(OPTIMIZER_CHECKS))
def test_optimizer_options_apply_to_both_networks(option):
    OPTIMIZER_CHECKS[option](
        lambda make_optimizer: point_gan(optimizer=make_optimizer), fit_points
    )


# -- options ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, field",
    [
        ({"label_noise": -1}, "label_noise"),
        ({"d_steps": 0}, "d_steps"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**31}, "seed"),
        ({"latent": 4}, "latent"),
    ],
)
def test_bad_options_name_step_and_field(options, field):
    generator, discriminator = small_conv_networks()
    models = {"generator": generator, "discriminator": discriminator}
    check_bad_option("gan", models, options, field)


def test_show_lists_the_options(capsys):
    from keras_steps import _cli

    assert _cli.main(["show", "gan"]) == 0
    out = capsys.readouterr().out
    for field in ("latent_dim", "label_noise", "d_steps", "seed"):
        assert field in out
    assert "generator, discriminator" in out


def test_step_state_holds_the_seed_generator():
    model = point_gan(seed=5)
    state = model.step_state["seed_generator"]
    assert isinstance(state, keras.random.SeedGenerator)
    # Tracked by Keras, so it is saved with the model.
    assert any(v is state.state for v in model.non_trainable_variables)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(state.state), [5, 0])


# -- the demo -----------------------------------------------------------------------
def test_demo_writes_samples_and_curves(tmp_path):
    files = gan_module.step_demo(tmp_path, 1, 2)
    assert set(files) == {"samples", "curves"}
    check_png(files["samples"], (640, 320))  # 8x4 digits, 80 pixels each
    check_png(files["curves"], (480, 320))


# -- compile(loss=...) and the arguments the step refuses -------------------------
def _with_sigmoid(discriminator):
    """The same discriminator ending in a sigmoid (as keras-io's DCGAN)."""
    return keras.Sequential(
        [discriminator, layers.Activation("sigmoid")], name="sigmoid_discriminator"
    )


def test_sigmoid_discriminator_with_a_probability_loss_trains_as_logits():
    """BCE on probabilities of a sigmoid output: the logit step's numbers."""
    x = tiny_images()
    generator, discriminator = small_conv_networks()
    g2, d2 = copies(generator, discriminator)
    # Labels in [0, 1]: torch's cross-entropy on probabilities refuses others.
    logits = gan_model(generator, discriminator, label_noise=0.0)
    probabilities = gan_model(
        g2, _with_sigmoid(d2), loss=keras.losses.BinaryCrossentropy(), label_noise=0.0
    )
    kw = dict(batch_size=16, epochs=1, shuffle=False, verbose=0)
    a = logits.fit(x, **kw).history
    b = probabilities.fit(x, **kw).history
    # Keras clips probabilities at 1e-7, so not bit for bit.
    for key in ("d_loss", "g_loss"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, err_msg=key)
    assert probabilities.evaluate(x, verbose=0, return_dict=True) == pytest.approx(
        logits.evaluate(x, verbose=0, return_dict=True), rel=1e-4
    )


def test_a_compiled_loss_is_the_adversarial_loss():
    """Another loss gives other numbers; a loss name works like its object."""
    x = tiny_images()
    generator, discriminator = small_conv_networks()
    runs = {}
    losses = {"bce": None, "name": "mse", "object": keras.losses.MeanSquaredError()}
    for label, loss in losses.items():
        model = gan_model(*copies(generator, discriminator), loss=loss)
        runs[label] = model.fit(
            x, batch_size=16, epochs=1, shuffle=False, verbose=0
        ).history["d_loss"]
    assert abs(runs["bce"][0] - runs["name"][0]) > 1e-3
    np.testing.assert_allclose(runs["name"], runs["object"], rtol=1e-6)


def test_the_compiled_loss_is_saved(tmp_path):
    x = tiny_images()
    generator, discriminator = small_conv_networks()
    model = gan_model(generator, discriminator, loss=keras.losses.MeanSquaredError())
    model.fit(x, batch_size=16, epochs=1, verbose=0)
    model.save(tmp_path / "gan.keras")
    loaded = keras.models.load_model(tmp_path / "gan.keras")
    assert isinstance(loaded.loss, keras.losses.MeanSquaredError)
    assert loaded.evaluate(x, verbose=0) == pytest.approx(model.evaluate(x, verbose=0))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda m, x: m.fit(x, np.zeros(len(x)), verbose=0), "y"),
        (lambda m, x: m.fit({"images": x}, verbose=0), "nested_x"),
        (lambda m, x: m.fit(x, sample_weight=np.ones(len(x)), verbose=0), "sample_weight"),
        (lambda m, x: m.fit(x, class_weight={0: 1.0}, verbose=0), "class_weight"),
        (lambda m, x: m.evaluate(x, np.zeros(len(x)), verbose=0), "y"),
        (lambda m, x: m.compile(optimizer=m.optimizers, metrics=["accuracy"]), "metrics"),
        (lambda m, x: m.compile(optimizer=m.optimizers, loss_weights=[1.0]), "loss_weights"),
    ],
)
def test_arguments_the_step_cannot_use_are_refused(call, argument):
    model = point_gan()
    before = snapshot(model)
    with pytest.raises(keras_steps.ArgumentError) as info:
        call(model, gaussian_2d(32))
    message = str(info.value)
    assert "Step 'gan' (keras-steps " in message
    assert f"does not take {argument} " in message
    after = snapshot(model)
    for role in ROLES:
        for a, b in zip(before[role], after[role], strict=True):
            np.testing.assert_array_equal(a, b)


def test_one_optimizer_for_both_roles_is_refused():
    model = point_gan()
    shared = keras.optimizers.Adam()
    with pytest.raises(keras_steps.RoleError, match=r"'generator' and 'discriminator'.*same"):
        model.compile(optimizer={"generator": shared, "discriminator": shared})


def test_a_role_without_an_optimizer_is_refused():
    model = point_gan()
    with pytest.raises(keras_steps.RoleError, match=r"role 'discriminator' needs an optimizer"):
        model.compile(optimizer={"generator": "adam", "discriminator": None})


@pytest.mark.parametrize("loss", ["binary_crossentropy", keras.losses.BinaryCrossentropy()])
def test_probability_loss_with_noisy_labels_is_refused(loss):
    generator, discriminator = small_conv_networks()
    model = gan_model(generator, _with_sigmoid(discriminator), loss=loss)
    with pytest.raises(keras_steps.StepError, match=r"'gan'.*label_noise=0.05.*label_noise=0"):
        model.fit(tiny_images(16), batch_size=16, verbose=0)
