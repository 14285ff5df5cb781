"""Fused (steps_per_execution > 1) and compiled (jit_compile=True) steps on torch."""

import keras
import numpy as np
import pytest
import torch

import keras_steps

RNG = np.random.default_rng(0)
# 10 batches of 8 with a short last one: groups of 4 are 4 + 4 + 2 batches.
X = RNG.random((75, 6)).astype("float32")
Y = (X @ RNG.normal(size=(6, 1)) + 0.1).astype("float32")
XV = RNG.random((21, 6)).astype("float32")
YV = (XV @ RNG.normal(size=(6, 1))).astype("float32")
BATCH = 8

# Keras <= 3.15 warns at every short last group (keras-team/keras#23360).
pytestmark = pytest.mark.filterwarnings("ignore:Your input ran out of data")


def _mlp(steps_per_execution, jit_compile=False):
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer="adam",
        loss="mse",
        metrics=["mae"],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def _assert_same_weights(a, b, atol=1e-6):
    for va, vb in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(va), keras.ops.convert_to_numpy(vb), atol=atol
        )


def _assert_same_history(a, b, rtol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, err_msg=key)


def _fit(model, **kwargs):
    return model.fit(
        X, Y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, **kwargs
    ).history


def test_fused_supervised_matches_one_step_per_execution():
    one, fused = _mlp(1), _mlp(4)
    h1 = _fit(one, validation_data=(XV, YV))
    h4 = _fit(fused, validation_data=(XV, YV))
    assert set(h1) == {"loss", "mae", "val_loss", "val_mae"}
    _assert_same_history(h1, h4)
    _assert_same_weights(one, fused)
    # The optimizer ran once per batch, not once per execution.
    assert int(fused.optimizer.iterations) == int(one.optimizer.iterations) == 20


def test_fused_evaluate_and_predict_match():
    one, fused = _mlp(1), _mlp(3)
    _fit(one)
    _fit(fused)
    np.testing.assert_allclose(
        one.evaluate(XV, YV, batch_size=4, verbose=0),
        fused.evaluate(XV, YV, batch_size=4, verbose=0),
        rtol=1e-6,
    )
    # 21 samples in batches of 4: 6 batches, two groups of 3, the last batch short.
    p1 = one.predict(XV, batch_size=4, verbose=0)
    p3 = fused.predict(XV, batch_size=4, verbose=0)
    assert p3.shape == (21, 1)
    np.testing.assert_allclose(p1, p3, rtol=1e-6)
    np.testing.assert_allclose(fused.predict_on_batch(XV), p3, rtol=1e-6)


def test_fused_predict_concatenates_dict_outputs():
    inputs = keras.Input(shape=(6,))
    outputs = {"a": keras.layers.Dense(2)(inputs), "b": keras.layers.Dense(3)(inputs)}
    model = keras_steps.StepModel(inputs, outputs)
    model.compile(steps_per_execution=4)
    fused = model.predict(XV, batch_size=2, verbose=0)
    model.compile(steps_per_execution=1)
    plain = model.predict(XV, batch_size=2, verbose=0)
    assert fused["a"].shape == (21, 2) and fused["b"].shape == (21, 3)
    for key in ("a", "b"):
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-6)


class _BatchEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.train, self.test, self.predict = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.train.append((batch, dict(logs)))

    def on_test_batch_end(self, batch, logs=None):
        self.test.append(batch)

    def on_predict_batch_end(self, batch, logs=None):
        self.predict.append(batch)


def test_callbacks_run_once_per_execution_with_the_last_batch_logs():
    model = _mlp(4)
    ends = _BatchEnds()
    history = model.fit(
        X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[ends]
    ).history
    # 10 batches in groups of 4: three executions, indexed by their last step
    # as Keras does on the backends that fuse (the last group is short).
    assert [b for b, _ in ends.train] == [3, 7, 11]
    # The logs of an execution are the metrics after its last batch, so the
    # last ones are the epoch's.
    assert ends.train[-1][1]["loss"] == pytest.approx(history["loss"][0], rel=1e-6)
    assert ends.train[0][1]["loss"] != pytest.approx(history["loss"][0], rel=1e-3)
    model.evaluate(XV, YV, batch_size=4, verbose=0, callbacks=[ends])
    model.predict(XV, batch_size=4, verbose=0, callbacks=[ends])
    assert ends.test == [3, 7] and ends.predict == [3, 7]


def test_no_host_transfer_between_batches_of_an_execution(monkeypatch):
    """Logs reach the host once per execution: Keras's callbacks do it, not the loop."""
    pulls = []
    # Where Keras's logs conversion looks it up (Keras 3.16 moved it to backend.ops).
    owner = keras.src.backend
    if not hasattr(owner, "convert_to_numpy"):
        owner = keras.src.backend.ops
    convert = owner.convert_to_numpy
    item = torch.Tensor.item

    def counting_convert(x):
        pulls.append("convert_to_numpy")
        return convert(x)

    def counting_item(self):
        pulls.append("item")
        return item(self)

    monkeypatch.setattr(owner, "convert_to_numpy", counting_convert)
    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    counts = {}
    for spe in (1, 5):
        model = _mlp(spe)
        pulls.clear()
        model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        counts[spe] = len(pulls)
    # Two metrics (loss, mae), pulled once per execution (10 or 2 of them) by the
    # batch-end callbacks, plus a fixed number of pulls at the end of the epoch.
    assert counts[1] - 2 * 10 == counts[5] - 2 * 2 > 0


def test_metric_results_are_computed_once_per_execution(monkeypatch):
    """The batches before the last of a group update metrics but compute no results."""
    results = []
    result = keras.metrics.Mean.result

    def counting_result(self):
        results.append(self.name)
        return result(self)

    monkeypatch.setattr(keras.metrics.Mean, "result", counting_result)
    counts = {}
    for spe in (1, 4):
        model = _mlp(spe)
        results.clear()
        model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        counts[spe, "fit"] = results.count("loss")
        results.clear()
        model.evaluate(X, Y, batch_size=BATCH, verbose=0)
        counts[spe, "evaluate"] = results.count("loss")
    # 10 batches: 10 or 3 executions, plus a fixed number of reads at the end.
    assert counts[1, "fit"] - 10 == counts[4, "fit"] - 3 >= 0
    assert counts[1, "evaluate"] - 10 == counts[4, "evaluate"] - 3 >= 0


def test_a_step_reading_discarded_results_is_told_why():
    seen = []

    class Reads(keras_steps.StepModel):
        def train_step(self, data):
            logs = super().train_step(data)
            seen.append(len(logs))
            try:
                logs["loss"]
            except KeyError as exc:
                seen.append(str(exc))
            return logs

    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(6,))
    model = Reads(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mse", steps_per_execution=4)
    model.fit(X[:32], Y[:32], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    # Three discarded batches (each an empty dict that explains itself), then the last.
    assert seen[-1] == 1
    assert seen[:-1:2] == [0, 0, 0]
    assert "not computed for the batches before the last of a fused execution" in seen[1]


def test_train_on_batch_with_fused_compile():
    one, fused = _mlp(1), _mlp(8)
    a = one.train_on_batch(X[:8], Y[:8], return_dict=True)
    b = fused.train_on_batch(X[:8], Y[:8], return_dict=True)
    # Keras 3.12 returns 0-d NumPy arrays, later versions floats.
    a, b = ({k: float(v) for k, v in logs.items()} for logs in (a, b))
    assert a == pytest.approx(b, rel=1e-6)


class _TwoOptimizers:
    """Two networks, each updated by its own optimizer: the shape of a GAN step."""

    @keras_steps.hookimpl
    def step_model_roles(self):
        return ("generator", "critic")

    @keras_steps.hookimpl
    def step_optimizer_roles(self):
        return ("generator", "critic")

    @keras_steps.hookimpl
    def step_build(self):
        return {
            "c_loss": keras.metrics.Mean(name="c_loss"),
            "g_loss": keras.metrics.Mean(name="g_loss"),
            "seed": keras.random.SeedGenerator(3),
        }

    @keras_steps.hookimpl
    def step_call(self, model, inputs, training):
        return model.models["generator"](inputs, training=training)

    @keras_steps.hookimpl
    def train_step(self, model, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        state, nets, opts = model.step_state, model.models, model.optimizers
        noise = keras.random.normal((real.shape[0], 4), seed=state["seed"])
        fake = nets["generator"](noise, training=True)
        c_loss = keras.ops.mean(nets["critic"](fake)) - keras.ops.mean(nets["critic"](real))
        keras_steps.backprop(c_loss, opts["critic"], nets["critic"].trainable_weights)
        noise = keras.random.normal((real.shape[0], 4), seed=state["seed"])
        g_loss = -keras.ops.mean(nets["critic"](nets["generator"](noise, training=True)))
        keras_steps.backprop(g_loss, opts["generator"], nets["generator"].trainable_weights)
        state["c_loss"].update_state(c_loss)
        state["g_loss"].update_state(g_loss)
        return {"c_loss": state["c_loss"].result(), "g_loss": state["g_loss"].result()}

    @keras_steps.hookimpl
    def test_step(self, model, data):
        real = data[0] if isinstance(data, (tuple, list)) else data
        c_loss = -keras.ops.mean(model.models["critic"](real))
        model.step_state["c_loss"].update_state(c_loss)
        return {"c_loss": model.step_state["c_loss"].result()}


def _two_optimizer_model(steps_per_execution):
    keras.utils.set_random_seed(11)
    generator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6)])
    critic = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(1)]
    )
    model = keras_steps.StepModel(
        models={"generator": generator, "critic": critic}, step="two_optimizers"
    )
    model.compile(
        optimizer={
            "generator": keras.optimizers.Adam(1e-3),
            "critic": keras.optimizers.SGD(1e-2),
        },
        steps_per_execution=steps_per_execution,
    )
    return model


def test_fused_multi_optimizer_step_matches_one_step_per_execution():
    keras_steps.register_step(_TwoOptimizers(), name="two_optimizers")
    one, fused = _two_optimizer_model(1), _two_optimizer_model(3)
    h1 = one.fit(X, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history
    h3 = fused.fit(X, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history
    assert set(h1) == {"c_loss", "g_loss"}
    _assert_same_history(h1, h3)
    _assert_same_weights(one, fused)
    for role in ("generator", "critic"):
        assert int(fused.optimizers[role].iterations) == 20
    assert one.evaluate(XV, verbose=0) == pytest.approx(fused.evaluate(XV, verbose=0))


@pytest.mark.slow
def test_jit_compile_matches_eager():
    """torch.compile of the step (warm-up is slow on CPU: one small test)."""
    eager, compiled = _mlp(1), _mlp(2, jit_compile=True)
    h_eager = eager.fit(X[:32], Y[:32], batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    h_compiled = compiled.fit(
        X[:32], Y[:32], batch_size=BATCH, epochs=2, shuffle=False, verbose=0
    )
    _assert_same_history(h_eager.history, h_compiled.history, rtol=1e-5)
    _assert_same_weights(eager, compiled, atol=1e-5)
    np.testing.assert_allclose(
        eager.predict(XV[:8], batch_size=4, verbose=0),
        compiled.predict(XV[:8], batch_size=4, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.slow
def test_jit_compile_multi_optimizer_step_matches_eager():
    """A step with two networks and two optimizers compiles (with graph breaks) and matches."""
    keras_steps.register_step(_TwoOptimizers(), name="two_optimizers")
    eager, compiled = _two_optimizer_model(2), _two_optimizer_model(2)
    compiled.compile(
        optimizer={
            "generator": keras.optimizers.Adam(1e-3),
            "critic": keras.optimizers.SGD(1e-2),
        },
        steps_per_execution=2,
        jit_compile=True,
    )
    h_eager = eager.fit(X[:32], batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    h_compiled = compiled.fit(X[:32], batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    _assert_same_history(h_eager.history, h_compiled.history, rtol=1e-5)
    _assert_same_weights(eager, compiled, atol=1e-5)


class _GradientPenalty:
    """A double backward (a WGAN-GP-style gradient penalty), which AOTAutograd refuses."""

    @keras_steps.hookimpl
    def train_step(self, model, data):
        x, _ = data
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x, training=True).sum(), x, create_graph=True)
        keras_steps.backprop((grad**2).mean(), model.optimizer, model.trainable_weights)
        return {}

    @keras_steps.hookimpl
    def test_step(self):
        return {}


@pytest.mark.slow
def test_jit_compile_of_an_uncompilable_step_names_the_step():
    keras_steps.register_step(_GradientPenalty(), name="penalty")
    inputs = keras.Input(shape=(6,))
    model = keras_steps.StepModel(
        inputs, keras.layers.Dense(1, activation="tanh")(inputs), step="penalty"
    )
    model.compile(optimizer="sgd", jit_compile=True)
    with pytest.raises(keras_steps.StepError, match=r"'penalty' cannot run under .*jit_compile"):
        model.fit(X[:8], Y[:8], batch_size=8, verbose=0)
    model.compile(optimizer="sgd", jit_compile=False)
    model.fit(X[:8], Y[:8], batch_size=8, verbose=0)


def _conv_gan(jit_compile):
    # Convolutions of several sizes, as in the seed's GAN: the same Keras conv
    # code sees 4x4, 8x8 and 16x16 inputs.
    keras.utils.set_random_seed(3)
    generator = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(4 * 4 * 8),
            keras.layers.Reshape((4, 4, 8)),
            keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same"),
            keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid"),
        ]
    )
    discriminator = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Conv2D(8, 3, strides=2, padding="same"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(1),
        ]
    )
    model = keras_steps.StepModel(
        models={"generator": generator, "discriminator": discriminator},
        step="gan",
        step_options={"latent_dim": 8},
    )
    model.compile(
        optimizer={"generator": keras.optimizers.Adam(1e-3), "discriminator": "adam"},
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.slow
def test_jit_compile_of_a_conv_gan_matches_eager():
    """Shapes that change from call to call must not make torch.compile fail.

    With torch's default automatic dynamic shapes, the second size a Keras
    conv sees makes its sizes symbolic, and inductor (torch 2.13) fails to
    compile the backward of a strided "same" convolution.
    """
    images = np.random.default_rng(5).random((24, 16, 16, 1)).astype("float32")
    results = {}
    for jit in (False, True):
        model = _conv_gan(jit)
        history = model.fit(images, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results[jit] = (history.history, model)
    _assert_same_history(results[False][0], results[True][0], rtol=1e-4)
    _assert_same_weights(results[False][1], results[True][1], atol=1e-4)
