"""StepModel: its three forms, options, roles, compile and dispatch."""

import keras
import numpy as np
import pytest
from pydantic import Field

import keras_steps

X = np.random.default_rng(0).random((96, 4)).astype("float32")
Y = X @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")


class Options(keras_steps.StepOptions):
    """Options of the test step."""

    scale: float = Field(1.0, gt=0, description="A positive multiplier of the loss.")
    mode: str = Field("a", pattern="^(a|b)$", description="Either 'a' or 'b'.")


class ScaledMSE:
    """Mean squared error times a positive scale."""

    @keras_steps.hookimpl
    def step_options(self):
        return Options

    @keras_steps.hookimpl
    def step_build(self, model):
        return {"loss": keras.metrics.Mean(name="loss")}

    @keras_steps.hookimpl
    def train_step(self, model, data, options):
        x, y = data
        loss = options.scale * keras.ops.mean(keras.ops.square(model(x, training=True) - y))
        keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
        model.step_state["loss"].update_state(loss)
        return {"loss": model.step_state["loss"].result()}

    @keras_steps.hookimpl
    def test_step(self, model, data, options):
        x, y = data
        loss = options.scale * keras.ops.mean(keras.ops.square(model(x) - y))
        model.step_state["loss"].update_state(loss)
        return {"loss": model.step_state["loss"].result()}


class TwoNets:
    """Chains an encoder and a head, each with its own optimizer."""

    @keras_steps.hookimpl
    def step_model_roles(self):
        return ("encoder", "head")

    @keras_steps.hookimpl
    def step_optimizer_roles(self):
        return ("encoder", "head")

    @keras_steps.hookimpl
    def step_build(self):
        return {"loss": keras.metrics.Mean(name="loss")}

    @keras_steps.hookimpl
    def step_call(self, model, inputs, training):
        return model.models["head"](model.models["encoder"](inputs, training=training))

    @keras_steps.hookimpl
    def train_step(self, model, data):
        x, y = data
        for role in ("head", "encoder"):
            loss = keras.ops.mean(keras.ops.square(model(x, training=True) - y))
            keras_steps.backprop(loss, model.optimizers[role], model.models[role].trainable_weights)
        model.step_state["loss"].update_state(loss)
        return {"loss": model.step_state["loss"].result()}

    @keras_steps.hookimpl
    def test_step(self, model, data):
        x, y = data
        model.step_state["loss"].update_state(keras.ops.mean(keras.ops.square(model(x) - y)))
        return {"loss": model.step_state["loss"].result()}


@pytest.fixture
def scaled():
    keras_steps.register_step(ScaledMSE(), name="scaled")


@pytest.fixture
def twonets():
    keras_steps.register_step(TwoNets(), name="twonets")


def functional(step="supervised", **kw):
    inputs = keras.Input((4,))
    return keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs), step=step, **kw)


def wrapped(step="supervised", **kw):
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    return keras_steps.StepModel(models={"model": seq}, step=step, **kw)


class Subclassed(keras_steps.StepModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not args:
            self.dense = keras.layers.Dense(1)

    def call(self, x):
        if hasattr(self, "dense"):
            return self.dense(x)
        return super().call(x)


def subclassed(step="supervised", **kw):
    return Subclassed(step=step, **kw)


FORMS = [functional, wrapped, subclassed]


@pytest.mark.parametrize("make", FORMS, ids=lambda f: f.__name__)
def test_every_form_trains_with_compile_loss_and_metrics(make):
    model = make()
    assert model.step == "supervised"
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    history = model.fit(X, Y, epochs=4, batch_size=16, verbose=0).history
    assert set(history) == {"loss", "mae"}
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert model.predict(X[:5], verbose=0).shape == (5, 1)
    loss, _mae = model.evaluate(X, Y, verbose=0)
    assert loss == pytest.approx(history["loss"][-1], rel=0.5)


def test_forms_in_any_order_keep_classes_intact():
    # keras.Model rewrites a subclass's bases when built functionally; StepModel must not.
    bases_before = (Subclassed.__bases__, keras_steps.StepModel.__bases__)
    inputs = keras.Input((4,))
    as_functional = Subclassed(inputs, keras.layers.Dense(1)(inputs))
    as_subclass = Subclassed()
    as_wrapper = wrapped()
    assert (Subclassed.__bases__, keras_steps.StepModel.__bases__) == bases_before
    for model in (as_functional, as_subclass, as_wrapper, functional(), Subclassed()):
        assert isinstance(model, keras_steps.StepModel)
        model.compile(optimizer="sgd", loss="mse")
        model.fit(X, Y, epochs=1, verbose=0)
    assert isinstance(as_functional, Subclassed)
    assert isinstance(as_functional, keras.src.models.functional.Functional)
    assert not isinstance(as_subclass, keras.src.models.functional.Functional)


def test_subclass_overriding_train_step_bypasses_the_step():
    calls = []

    class Own(keras_steps.StepModel):
        def train_step(self, data):
            calls.append(1)
            return super().train_step(data)

    inputs = keras.Input((4,))
    model = Own(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(X, Y, batch_size=32, epochs=1, verbose=0)
    assert len(calls) == 3


@pytest.mark.parametrize("make", FORMS, ids=lambda f: f.__name__)
def test_options_dict_and_instance(scaled, make):
    model = make("scaled", step_options={"scale": 3.0})
    assert isinstance(model.step_options, Options)
    assert model.step_options.scale == 3.0
    model2 = make("scaled", step_options=Options(scale=2.0, mode="b"))
    assert model2.step_options.mode == "b"
    assert make("scaled").step_options == Options()
    model.compile(optimizer="sgd")
    history = model.fit(X, Y, epochs=2, verbose=0).history
    assert list(history) == ["loss"]


def test_bad_option_type_names_step_field_value_and_expectation(scaled):
    with pytest.raises(keras_steps.OptionsError) as err:
        functional("scaled", step_options={"scale": "big"})
    msg = str(err.value)
    assert "'scaled'" in msg and "'scale'" in msg and "'big'" in msg
    assert "A positive multiplier" in msg


def test_out_of_range_option(scaled):
    with pytest.raises(keras_steps.OptionsError, match=r"'scale' = -1.*greater than 0"):
        functional("scaled", step_options={"scale": -1})


def test_unknown_option_lists_the_options(scaled):
    with pytest.raises(keras_steps.OptionsError) as err:
        functional("scaled", step_options={"scael": 2})
    assert "unknown option 'scael'" in str(err.value)
    assert "mode, scale" in str(err.value)


def test_options_of_another_class_or_type(scaled):
    with pytest.raises(keras_steps.OptionsError, match="dict or a Options"):
        functional("scaled", step_options=[1, 2])

    class Other(keras_steps.StepOptions):
        scale: float = 1.0

    with pytest.raises(keras_steps.OptionsError, match="instance of Other"):
        functional("scaled", step_options=Other())


def test_step_without_options_rejects_any():
    expected = "(?s)'supervised'.*unknown option 'lr'.*options are: none"
    with pytest.raises(keras_steps.OptionsError, match=expected):
        functional(step_options={"lr": 1})


def test_options_are_revalidated_on_assignment(scaled):
    model = functional("scaled")
    with pytest.raises(Exception, match="greater than 0"):
        model.step_options.scale = 0


def test_options_schema_exports():
    schema = Options.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"]["scale"]["description"].startswith("A positive")


def test_multi_network_step_needs_models(twonets):
    with pytest.raises(keras_steps.RoleError, match=r"models=\{'encoder': ..., 'head': ...\}"):
        functional("twonets")


def _twonets(**models):
    return keras_steps.StepModel(models=models, step="twonets")


def _enc():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])


def _head():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])


def test_missing_and_extra_model_roles(twonets):
    with pytest.raises(keras_steps.RoleError, match=r"Missing: \['head'\]"):
        _twonets(encoder=_enc())
    with pytest.raises(keras_steps.RoleError, match=r"Unknown: \['extra'\]"):
        _twonets(encoder=_enc(), head=_head(), extra=_head())
    with pytest.raises(keras_steps.RoleError, match="must be a keras.Model"):
        _twonets(encoder=_enc(), head="not a model")


def test_optimizer_roles(twonets):
    model = _twonets(encoder=_enc(), head=_head())
    with pytest.raises(keras_steps.RoleError, match="one optimizer per role"):
        model.compile(optimizer="adam")
    with pytest.raises(keras_steps.RoleError, match=r"Missing: \['head'\]"):
        model.compile(optimizer={"encoder": "adam"})
    with pytest.raises(keras_steps.RoleError, match=r"Unknown: \['decoder'\]"):
        model.compile(optimizer={"encoder": "adam", "head": "sgd", "decoder": "sgd"})
    model.compile(optimizer={"encoder": "adam", "head": keras.optimizers.SGD(0.01)})
    assert model.optimizer is None
    assert set(model.optimizers) == {"encoder", "head"}
    # Each optimizer is built on its own network's weights at compile time.
    assert model.optimizers["head"].built
    assert len(model.optimizers["head"]._trainable_variables) == 2
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(X, Y, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert all(not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_weights))
    assert model.predict(X[:2], verbose=0).shape == (2, 1)


def test_single_optimizer_role_accepts_dict_with_that_role():
    model = functional()
    model.compile(optimizer={"model": "adam"}, loss="mse")
    assert model.optimizers == {"model": model.optimizer}
    with pytest.raises(keras_steps.RoleError, match="Unknown"):
        model.compile(optimizer={"generator": "adam"}, loss="mse")


def test_mixed_float16_wraps_every_role_optimizer(twonets):
    keras.config.set_dtype_policy("mixed_float16")
    model = _twonets(encoder=_enc(), head=_head())
    model.compile(optimizer={"encoder": "adam", "head": "sgd"})
    for opt in model.optimizers.values():
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    history = model.fit(X, Y, epochs=3, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["loss"][-1] < history["loss"][0]


def test_both_functional_and_models_is_an_error():
    inputs = keras.Input((4,))
    with pytest.raises(keras_steps.RoleError, match="use one form"):
        keras_steps.StepModel(inputs, inputs, models={"model": _enc()})


def test_models_property_per_form():
    f = functional()
    assert f.models == {"model": f}
    w = wrapped()
    assert list(w.models) == ["model"] and w.models["model"] is not w


def test_step_state_trackers_reset_each_epoch(scaled):
    model = functional("scaled")
    assert model.step_state["loss"] in model.metrics
    model.compile(optimizer="sgd")
    assert [m.name for m in model.metrics] == ["loss"]
    per_batch = []
    cb = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: per_batch.append(float(logs["loss"]))
    )
    model.fit(X, Y, batch_size=96, epochs=2, verbose=0, callbacks=[cb])
    # One batch per epoch: the epoch-2 value is that batch's loss alone, not a
    # running mean over both epochs.
    assert per_batch[1] < per_batch[0]
    expected = np.mean(np.square(model.predict(X, verbose=0) - Y))
    assert model.evaluate(X, Y, verbose=0) == pytest.approx(float(expected), rel=1e-5)


def test_step_build_must_return_dict():
    class BadBuild(ScaledMSE):
        @keras_steps.hookimpl
        def step_build(self):
            return ["not", "a", "dict"]

    keras_steps.register_step(BadBuild(), name="badbuild")
    with pytest.raises(keras_steps.StepError, match="step_build returned list"):
        functional("badbuild")


def test_weights_round_trip_through_a_file(tmp_path):
    """load_weights (hence BackupAndRestore) works on every form of StepModel."""
    inputs = keras.Input((4,))
    functional = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs))
    keras_steps.register_step(TwoNets(), name="two_nets")
    encoder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    roles = keras_steps.StepModel(models={"encoder": encoder, "head": head}, step="two_nets")
    for model in (functional, roles):
        path = tmp_path / f"{model.name}.weights.h5"
        model.save_weights(path)
        saved = [np.array(w) for w in model.get_weights()]
        model.set_weights([w + 1.0 for w in saved])
        model.load_weights(path)
        for got, want in zip(model.get_weights(), saved, strict=True):
            np.testing.assert_array_equal(got, want)


def test_missing_required_option_is_named_without_dumping_the_dict():
    class Required(keras_steps.StepOptions):
        rho: float = Field(description="A required radius.")

    class NeedsRho(ScaledMSE):
        @keras_steps.hookimpl
        def step_options(self):
            return Required

    keras_steps.register_step(NeedsRho(), name="needsrho")
    with pytest.raises(keras_steps.OptionsError) as err:
        functional("needsrho", step_options={})
    assert "option 'rho' is required and was not given (expected: A required radius.)" in str(
        err.value
    )
