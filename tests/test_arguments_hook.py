"""The ``step_arguments`` hook itself, with third-party-style steps.

``tests/test_arguments.py`` checks what the shipped steps declare; this file
checks the mechanism: declarations validated when a step is resolved, each
rule enforced where the user gives the argument (``compile``, ``fit``,
``evaluate``, a dataset's batches), and ``test_step`` defaulting to Keras's.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_steps
from keras_steps import ArgumentError, PluginError, Refused, StepModel

X = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
Y = X.sum(axis=1, keepdims=True)


class CompiledLoss:
    """Trains with the compiled loss; declares what it takes (set per test)."""

    def __init__(self, declared=None):
        self.declared = declared

    @keras_steps.hookimpl
    def step_arguments(self):
        return self.declared

    @keras_steps.hookimpl
    def train_step(self, model, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
        model.metrics[0].update_state(loss)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def model_for(plugin, name="third-party", compile_args=None):
    keras_steps.register_step(plugin, name=name)
    inputs = keras.Input((4,), name="features")
    model = StepModel(inputs, keras.layers.Dense(1)(inputs), step=name)
    model.compile(optimizer="sgd", **({"loss": "mse"} if compile_args is None else compile_args))
    return model


class Batches(keras.utils.PyDataset):
    """A dataset of (x,), (x, y) or (x, y, w) batches of 16."""

    def __init__(self, *arrays):
        super().__init__()
        self.arrays = arrays

    def __len__(self):
        return 2

    def __getitem__(self, i):
        part = tuple(a[16 * i : 16 * (i + 1)] for a in self.arrays)
        return part if len(part) > 1 else part[0]


@pytest.mark.parametrize(
    ("declared", "match"),
    [
        ({"labels": "required"}, r"unknown argument 'labels'"),
        ({"sample_weight": "required"}, r"'sample_weight' the rule 'required'"),
        ({"loss": "defaults_to_x"}, r"'loss' the rule 'defaults_to_x'"),
        (["y"], r"returned list; expected a dict"),
    ],
)
def test_bad_declarations_are_plugin_errors(declared, match):
    with pytest.raises(PluginError, match=rf"Step 'bad' .*{match}"):
        keras_steps.register_step(CompiledLoss(declared), name="bad")


def test_refused_needs_a_reason():
    with pytest.raises(TypeError, match="what the step does instead"):
        Refused("  ")


def test_refusals_name_step_source_argument_and_reason():
    model = model_for(
        CompiledLoss(
            {
                "sample_weight": Refused("it weighs nothing"),
                "metrics": Refused("it reports its loss only"),
                "nested_x": Refused("x must be one tensor"),
            }
        )
    )
    cases = [
        (lambda: model.fit(X, Y, sample_weight=np.ones(32), verbose=0), "sample_weight"),
        (lambda: model.evaluate(X, Y, sample_weight=np.ones(32), verbose=0), "sample_weight"),
        (lambda: model.fit(Batches(X, Y, np.ones(32)), verbose=0), "sample_weight"),
        (lambda: model.fit({"features": X}, Y, verbose=0), "nested_x"),
        (lambda: model.compile(optimizer="sgd", loss="mse", metrics=["mae"]), "metrics"),
        (lambda: model.train_on_batch(X, Y, sample_weight=np.ones(32)), "sample_weight"),
    ]
    reasons = {
        "sample_weight": "It weighs nothing.",
        "metrics": "It reports its loss only.",
        "nested_x": "X must be one tensor.",
    }
    before = model.get_weights()
    for call, argument in cases:
        with pytest.raises(ArgumentError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"Step 'third-party' (local) does not take {argument} ")
        assert message.endswith(reasons[argument])
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_required_y_is_checked_for_arrays_datasets_and_validation_data():
    model = model_for(CompiledLoss({"y": "required"}))
    for call in (
        lambda: model.fit(X, verbose=0),
        lambda: model.fit(Batches(X), verbose=0),  # Keras's symbolic build comes first
        lambda: model.fit(X, Y, validation_data=(X,), verbose=0),
        lambda: model.evaluate(X, verbose=0),
        lambda: model.test_on_batch(X),
    ):
        with pytest.raises(ArgumentError, match=r"Step 'third-party' \(local\) needs y"):
            call()
    model.fit(Batches(X, Y), verbose=0)  # the same data with targets trains


def test_required_loss_is_checked_at_fit_and_evaluate():
    model = model_for(CompiledLoss({"loss": "required"}), compile_args={})
    for call in (lambda: model.fit(X, Y, verbose=0), lambda: model.evaluate(X, Y, verbose=0)):
        with pytest.raises(ArgumentError, match=r"needs loss \(compile\(loss=...\)\)"):
            call()


@pytest.mark.parametrize("weights", ["sample_weight", "class_weight"])
def test_weights_without_targets_are_refused(weights):
    """Keras drops the weights of data without y; every step says so instead."""
    inputs = keras.Input((4,))
    model = StepModel(inputs, keras.layers.Dense(1)(inputs))  # supervised
    model.compile(optimizer="sgd", loss="mse")
    value = np.ones(32) if weights == "sample_weight" else {0: 1.0}
    with pytest.raises(ArgumentError, match=rf"'supervised' .*got {weights} but no y"):
        model.fit(X, **{weights: value}, verbose=0)


def test_an_undeclared_step_is_unchecked_as_in_keras():
    model = model_for(CompiledLoss(None))
    assert not model._step.arguments.declared
    model.fit({"features": X}, Y, sample_weight=np.ones(32), verbose=0)


class OwnLoss:
    """Computes with ``model.loss`` itself (here: on the outputs alone)."""

    @keras_steps.hookimpl
    def step_arguments(self):
        return {"loss": "own", "y": Refused("it needs no targets")}

    @keras_steps.hookimpl
    def step_build(self):
        return {"loss": keras.metrics.Mean(name="loss")}

    @keras_steps.hookimpl
    def train_step(self, model, data):
        y_pred = model(data, training=True)
        loss_fn = keras.losses.get(model.loss or "mse")
        loss = keras.ops.mean(loss_fn(keras.ops.ones_like(y_pred), y_pred))
        keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
        model.step_state["loss"].update_state(loss)
        return {"loss": model.step_state["loss"].result()}

    @keras_steps.hookimpl
    def test_step(self, model, data):
        return {}


def test_an_own_loss_reaches_the_step_not_keras(tmp_path):
    losses = {}
    for loss in ("mse", "mae"):
        keras.utils.set_random_seed(0)
        model = model_for(OwnLoss(), name=f"own-{loss}", compile_args={"loss": loss})
        assert model.loss == loss
        # fit(x) without y trains: Keras built no compiled loss from it, whose
        # symbolic build would have needed targets.
        losses[loss] = model.fit(X, batch_size=16, verbose=0).history["loss"][0]
    assert abs(losses["mse"] - losses["mae"]) > 1e-3
    model.save(tmp_path / "own.keras")
    assert keras.models.load_model(tmp_path / "own.keras").loss == "mae"


class TrainOnly:
    """Only train_step: evaluate() is Keras's own test step."""

    @keras_steps.hookimpl
    def train_step(self, model, data):
        return CompiledLoss().train_step(model, data)


def test_test_step_defaults_to_keras():
    keras.utils.set_random_seed(0)
    model = model_for(TrainOnly(), compile_args={"loss": "mse", "metrics": ["mae"]})
    assert "test_step" not in model._step.hooks
    model.fit(X, Y, verbose=0)
    plain = keras.Model(model.inputs, model.outputs)
    plain.compile(loss="mse", metrics=["mae"])
    expected = plain.evaluate(X, Y, verbose=0, return_dict=True)
    got = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert got.keys() == {"loss", "mae"}
    assert got == pytest.approx(expected, rel=1e-6)
