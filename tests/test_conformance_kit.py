"""The conformance kit itself: sound steps pass, planted defects fail by name."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import keras
import numpy as np
import pytest
import torch
from pydantic import Field, model_validator

import keras_steps
from keras_steps import hookimpl, hookspecs
from keras_steps.testing import (
    CHECKS,
    ConformanceError,
    ConformanceWarning,
    check_step,
    hook_problems,
    options_problems,
    persistence_support,
)

SKIP_SAVE = [c for c in CHECKS if c != "save_load"]


def _unpack(data):
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    return x, y


class Options(keras_steps.StepOptions):
    """Options of the test steps."""

    scale: float = Field(1.0, gt=0, le=10, description="Multiplier of the loss.")


class Sound:
    """Regression with its own trackers, as in the seed guide's second example."""

    @hookimpl
    def step_options():
        return Options

    @hookimpl
    def step_build():
        return {
            "loss": keras.metrics.Mean(name="loss"),
            "mae": keras.metrics.MeanAbsoluteError(name="mae"),
        }

    @hookimpl
    def train_step(model, data, options):
        x, y = _unpack(data)
        y_pred = model(x, training=True)
        loss = options.scale * keras.ops.mean(keras.ops.square(y - y_pred))
        keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
        return _track(model.step_state, loss, y, y_pred)

    @hookimpl
    def test_step(model, data, options):
        x, y = _unpack(data)
        y_pred = model(x, training=False)
        loss = options.scale * keras.ops.mean(keras.ops.square(y - y_pred))
        return _track(model.step_state, loss, y, y_pred)


def _track(trackers, loss, y, y_pred):
    trackers["loss"].update_state(loss)
    trackers["mae"].update_state(y, y_pred)
    return {name: t.result() for name, t in trackers.items()}


def _failure(excinfo) -> str:
    return str(excinfo.value)


def test_sound_step_passes_every_check():
    report = check_step("sound", plugin=Sound, checks=SKIP_SAVE)
    assert report.ok
    assert set(report.results) == set(SKIP_SAVE)
    assert "sound" not in [s.name for s in keras_steps.list_steps()]  # unregistered


def test_supervised_passes_with_defaults():
    report = check_step("supervised", checks=SKIP_SAVE)
    assert all(r.status == "passed" for r in report.results.values())


def test_save_load_is_skipped_with_a_note_only_when_unsupported(tmp_path):
    supported, reason = persistence_support()
    if supported:
        report = check_step("supervised", checks=["save_load"], tmp_path=tmp_path)
        assert report.results["save_load"].status == "passed"
        assert (tmp_path / "supervised.keras").exists()
    else:
        with pytest.warns(ConformanceWarning, match="save_load skipped"):
            report = check_step("supervised", checks=["save_load"])
        assert report.results["save_load"].status == "skipped"
        assert "register" in reason and "Keras-serializable" in reason


# -- planted defects ----------------------------------------------------------


def _unscaled_train_step(call_scale_loss):
    """The seed guide's hand-written update, which never scales the loss."""

    @hookimpl
    def train_step(model, data):
        x, y = _unpack(data)
        y_pred = model(x, training=True)
        loss = keras.ops.mean(keras.ops.square(y - y_pred))
        weights = model.trainable_weights
        for w in weights:
            w.value.grad = None
        if call_scale_loss:
            model.optimizer.scale_loss(loss)  # and throw the scaled loss away
        loss.backward()
        with torch.no_grad():
            model.optimizer.apply([w.value.grad for w in weights], weights)
        return _track(model.step_state, loss, y, y_pred)

    return train_step


class ForgetsScaleLoss(Sound):
    """Back-propagates the raw loss, as hand-written steps often do."""

    train_step = _unscaled_train_step(call_scale_loss=False)


def test_step_that_forgets_scale_loss_fails():
    with pytest.raises(ConformanceError) as excinfo:
        check_step("forgets", plugin=ForgetsScaleLoss, checks=["loss_scaling"])
    message = _failure(excinfo)
    assert "loss_scaling: failed" in message
    assert "without calling its scale_loss() first" in message
    assert "keras_steps.backprop" in message


class DiscardsScaledLoss(Sound):
    """Calls scale_loss, then back-propagates the unscaled loss anyway."""

    train_step = _unscaled_train_step(call_scale_loss=True)


def test_step_that_discards_the_scaled_loss_fails():
    with pytest.raises(ConformanceError) as excinfo:
        check_step("discards", plugin=DiscardsScaledLoss, checks=["loss_scaling"])
    assert "does not back-propagate the scaled loss" in _failure(excinfo)


_OUTSIDE: dict[str, keras.metrics.Metric] = {}


class NeverResets(Sound):
    """Keeps its trackers where Keras cannot see them."""

    @hookimpl
    def step_build():
        _OUTSIDE["loss"] = keras.metrics.Mean(name="loss")
        _OUTSIDE["mae"] = keras.metrics.MeanAbsoluteError(name="mae")

    @hookimpl
    def train_step(model, data):
        x, y = _unpack(data)
        y_pred = model(x, training=True)
        loss = keras.ops.mean(keras.ops.square(y - y_pred))
        keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
        return _track(_OUTSIDE, loss, y, y_pred)

    @hookimpl
    def test_step(model, data):
        x, y = _unpack(data)
        y_pred = model(x, training=False)
        return _track(_OUTSIDE, keras.ops.mean(keras.ops.square(y - y_pred)), y, y_pred)


def test_step_whose_metrics_never_reset_fails():
    with pytest.raises(ConformanceError) as excinfo:
        check_step("never-resets", plugin=NeverResets, checks=["metrics_reset"])
    message = _failure(excinfo)
    assert (
        "metric 'loss' (Mean) was updated during fit() but Keras never resets it"
        in (message)
    )
    assert "'mae' (MeanAbsoluteError)" in message
    assert "step_build" in message


class NoDefaultOptions(keras_steps.StepOptions):
    """Options a user cannot leave out."""

    rho: float = Field(gt=0, description="Neighbourhood radius.")
    mode: str = "a"


class NoDefaults(Sound):
    """Sound, except for its options."""

    @hookimpl
    def step_options():
        return NoDefaultOptions


def test_options_without_defaults_fail():
    with pytest.raises(ConformanceError) as excinfo:
        check_step("no-defaults", plugin=NoDefaults, checks=["options", "fit"])
    message = _failure(excinfo)
    assert "option 'rho' has no default" in message
    assert "option 'mode' has no description" in message
    # The dynamic checks run too and say why they cannot build the model.
    assert "fit: failed" in message and "OptionsError" in message


class BadDefault(keras_steps.StepOptions):
    """A default outside its own range."""

    count: int = Field(-1, ge=0, description="How many.")


class Loose(keras_steps.StepOptions):
    """An untyped option, and a validator that blames the whole model."""

    anything: Any = Field(None, description="Accepts whatever it is given.")
    rate: float = Field(0.5, description="A rate.")

    @model_validator(mode="before")
    @classmethod
    def _numbers_only(cls, values):
        if not isinstance(values.get("rate", 0.0), float | int):
            raise ValueError("rate must be a number")
        return values


def test_options_problems_names_bad_defaults_loose_types_and_unnamed_errors():
    assert options_problems(BadDefault, "x") == [
        "the default of option 'count' is invalid: Input should be greater than "
        "or equal to 0 (default -1)."
    ]
    problems = "\n".join(options_problems(Loose, "x"))
    assert "option 'anything' accepts the bad value <arbitrary object>" in problems
    assert "option 'rate' = <arbitrary object> is rejected, but the error does not" in (
        problems
    )
    assert options_problems(Options, "x") == []
    assert options_problems(dict, "x") == [
        "the options class <class 'dict'> is not a StepOptions subclass."
    ]


class Misspelled:
    """Implements trian_step instead of train_step."""

    @hookimpl
    def trian_step(model, data):
        return {}

    @hookimpl
    def test_step(model, data):
        return {}

    def step_build(model):  # forgot @hookimpl
        return {}


def test_misspelled_and_unmarked_hooks_fail():
    problems = "\n".join(hook_problems(Misspelled, "misspelled"))
    assert "step_build is defined but not marked with @keras_steps.hookimpl" in problems
    assert (
        "trian_step is marked @keras_steps.hookimpl but is not a keras_steps hook"
        in (problems)
    )
    assert "Did you mean 'train_step'?" in problems
    with pytest.raises(ConformanceError, match="hooks: failed"):
        check_step("misspelled", plugin=Misspelled)


class WrongArgument(Sound):
    """train_step takes an argument the hook does not have."""

    @hookimpl
    def train_step(model, batch):
        return {}


class Wrapper(Sound):
    """A hook wrapper, which keras_steps never calls."""

    @hookimpl(wrapper=True)
    def predict_step(model, data):
        return (yield)


class MissingTrainStep:
    """Only a test_step."""

    @hookimpl
    def test_step(model, data):
        return {}


def test_hook_signature_wrapper_and_required_hooks():
    (wrong,) = hook_problems(WrongArgument, "wrong")
    assert "train_step" in wrong and "batch" in wrong
    (wrapper,) = hook_problems(Wrapper, "wrapper")
    assert "predict_step is a hook wrapper" in wrapper
    (missing,) = hook_problems(MissingTrainStep, "missing")
    assert "required hook(s) train_step" in missing
    assert hook_problems(Sound, "sound") == []


class TrainsInEvaluate(Sound):
    """test_step is a copy of train_step: it updates the weights."""

    @hookimpl
    def test_step(model, data, options):
        with torch.enable_grad():
            return Sound.train_step(model, data, options)


class WrongPredictions(Sound):
    """predict_step returns one row for the whole batch."""

    @hookimpl
    def predict_step(model, data):
        x, _ = _unpack((data,) if not isinstance(data, tuple) else data)
        return keras.ops.mean(model(x), axis=0, keepdims=True)


def test_evaluate_that_trains_and_bad_predictions_fail():
    with pytest.raises(ConformanceError, match=r"evaluate\(\) changed weights"):
        check_step("trains-in-eval", plugin=TrainsInEvaluate, checks=["fit"])
    with pytest.raises(ConformanceError, match="expected a batch dimension of 64"):
        check_step("wrong-predictions", plugin=WrongPredictions, checks=["fit"])


def test_unknown_check_and_missing_networks_are_usage_errors():
    with pytest.raises(ValueError, match="Unknown check"):
        check_step("supervised", checks=["fitt"])
    with pytest.raises(ValueError, match="several networks"):
        check_step("mini-gan", plugin=MiniGAN)


# -- a two-network step -------------------------------------------------------


class GANOptions(keras_steps.StepOptions):
    """Options of the small GAN."""

    latent_dim: int = Field(2, ge=1, le=64, description="Size of the latent vectors.")


class MiniGAN:
    """A small GAN on vectors: two networks, two optimizers, seeded noise."""

    @hookimpl
    def step_options():
        return GANOptions

    @hookimpl
    def step_model_roles():
        return ("generator", "discriminator")

    @hookimpl
    def step_optimizer_roles():
        return ("generator", "discriminator")

    @hookimpl
    def step_build():
        return {
            "d_loss": keras.metrics.Mean(name="d_loss"),
            "g_loss": keras.metrics.Mean(name="g_loss"),
            "seed": keras.random.SeedGenerator(7),
        }

    @hookimpl
    def step_call(model, inputs, training):
        return model.models["generator"](inputs, training=training)

    @hookimpl
    def train_step(model, data, options):
        real, _ = _unpack(data)
        g, d = model.models["generator"], model.models["discriminator"]
        state = model.step_state
        n = keras.ops.shape(real)[0]
        z = keras.random.normal((n, options.latent_dim), seed=state["seed"])
        fake = g(z)
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        both = keras.ops.concatenate([keras.ops.stop_gradient(fake), real], axis=0)
        labels = keras.ops.concatenate(
            [keras.ops.ones((n, 1)), keras.ops.zeros((n, 1))]
        )
        d_loss = bce(labels, d(both))
        keras_steps.backprop(
            d_loss, model.optimizers["discriminator"], d.trainable_weights
        )
        g_loss = bce(keras.ops.zeros((n, 1)), d(g(z)))
        keras_steps.backprop(g_loss, model.optimizers["generator"], g.trainable_weights)
        state["d_loss"].update_state(d_loss)
        state["g_loss"].update_state(g_loss)
        return {"d_loss": state["d_loss"].result(), "g_loss": state["g_loss"].result()}

    @hookimpl
    def test_step(model, data):
        return {k: model.step_state[k].result() for k in ("d_loss", "g_loss")}


def _gan_networks():
    return {
        "generator": keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]),
        "discriminator": keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]),
    }


def test_two_network_step_passes_with_its_models_and_data():
    real = np.random.default_rng(0).normal(size=(64, 2)).astype("float32") + 3.0
    report = check_step(
        "mini-gan",
        plugin=MiniGAN,
        models=_gan_networks,
        data=real,
        predict_data=np.zeros((10, 2), "float32"),
        compile=lambda: {
            "optimizer": {
                "generator": keras.optimizers.Adam(1e-3),
                "discriminator": "adam",
            }
        },
        checks=SKIP_SAVE,
    )
    assert report.ok, report


class GANForgetsOneOptimizer(MiniGAN):
    """Scales the discriminator loss, not the generator's."""

    @hookimpl
    def train_step(model, data, options):
        real, _ = _unpack(data)
        g, d = model.models["generator"], model.models["discriminator"]
        n = keras.ops.shape(real)[0]
        z = keras.random.normal((n, options.latent_dim), seed=model.step_state["seed"])
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        d_loss = bce(keras.ops.zeros((n, 1)), d(real))
        keras_steps.backprop(
            d_loss, model.optimizers["discriminator"], d.trainable_weights
        )
        g_loss = bce(keras.ops.zeros((n, 1)), d(g(z)))
        for w in g.trainable_weights:
            w.value.grad = None
        g_loss.backward(inputs=[w.value for w in g.trainable_weights])
        with torch.no_grad():
            model.optimizers["generator"].apply(
                [w.value.grad for w in g.trainable_weights], g.trainable_weights
            )
        return {}


def test_multi_optimizer_step_names_the_optimizer_without_scaling():
    real = np.ones((32, 2), "float32")
    with pytest.raises(ConformanceError) as excinfo:
        check_step(
            "gan-forgets",
            plugin=GANForgetsOneOptimizer,
            models=_gan_networks,
            data=real,
            checks=["loss_scaling"],
        )
    message = _failure(excinfo)
    assert "optimizer 'generator'" in message
    assert "optimizer 'discriminator'" not in message


def test_deprecated_hook_fails_the_hooks_check(monkeypatch):
    monkeypatch.setattr(hookspecs, "DEPRECATED", dict(hookspecs.DEPRECATED))

    @hookspecs.deprecated(since="0.1", instead="Return the metrics from step_build.")
    @hookspecs.hookspec(firstresult=True)
    def step_metrics(model):
        """Old way to declare metrics. Deprecated in 0.1. Added in 0.1."""

    monkeypatch.setattr(hookspecs, "step_metrics", step_metrics, raising=False)
    assert hookspecs.DEPRECATED["step_metrics"][0] == "0.1"

    class UsesOldHook(Sound):
        """Implements the deprecated hook."""

        @hookimpl
        def step_metrics(model):
            return []

    (problem,) = hook_problems(UsesOldHook, "old")
    assert "Hook 'step_metrics' is deprecated since keras-steps 0.1" in problem
    assert "Return the metrics from step_build." in problem
    assert "test_conformance_kit.py:" in problem


def test_pytest_plugin_fixture_runs_the_kit(check_step):
    from keras_steps import testing

    assert check_step.__doc__ == testing.check_step.__doc__
    assert check_step("sound", plugin=Sound, checks=["hooks", "fit"]).ok


def test_pytest_plugin_imports_neither_keras_nor_keras_steps():
    # pytest loads it in every session of the environment, Keras project or not.
    code = (
        "import sys, keras_steps_pytest; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('keras', 'keras_steps', 'torch')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_snapshots_do_not_follow_in_place_updates():
    # .numpy() shares memory with the tensor: an in-place update after a
    # "before" snapshot must not change the snapshot.
    from keras_steps.testing._arrays import to_numpy

    variable = keras.Variable(np.zeros(3, "float32"))
    before = to_numpy(variable)
    with torch.no_grad():
        variable.value.add_(1.0)
    assert before.tolist() == [0.0, 0.0, 0.0]
    assert to_numpy(variable).tolist() == [1.0, 1.0, 1.0]


# -- fused and compiled ---------------------------------------------------------
class ReadsResultsWhileTraining(Sound):
    """Sound, except that it scales its loss by the running loss it reads back."""

    @hookimpl
    def train_step(model, data, options):
        x, y = _unpack(data)
        running = float(model.get_metrics_result()["loss"])
        y_pred = model(x, training=True)
        loss = keras.ops.mean(keras.ops.square(y - y_pred)) / (1.0 + running)
        keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
        return _track(model.step_state, loss, y, y_pred)


def test_sound_step_trains_the_same_fused():
    assert check_step("sound", plugin=Sound, checks=["fused"]).ok


def test_step_reading_its_logs_while_training_fails_fused():
    with pytest.raises(ConformanceError) as excinfo:
        check_step("reads-results", plugin=ReadsResultsWhileTraining, checks=["fused"])
    message = _failure(excinfo)
    assert "fused: failed" in message
    assert "fit() with compile(steps_per_execution=3) raised KeyError" in message
    assert "must not depend on the logs or on model.get_metrics_result()" in message


def _input_gradient_penalty(model, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x, training=True).sum(), x, create_graph=True)
    return (grad**2).mean()


class DoubleBackward(Sound):
    """Sound plus an input-gradient penalty: a double backward through the network."""

    penalty = staticmethod(_input_gradient_penalty)

    @hookimpl
    def train_step(self, model, data, options):
        x, y = _unpack(data)
        y_pred = model(x, training=True)
        loss = keras.ops.mean(keras.ops.square(y - y_pred)) + 0.1 * self.penalty(model, x)
        keras_steps.backprop(loss, model.optimizer, model.trainable_weights)
        return _track(model.step_state, loss, y, y_pred)

    @hookimpl
    def step_options(self):
        return Options

    @hookimpl
    def step_build(self):
        return Sound.step_build()

    @hookimpl
    def test_step(self, model, data, options):
        return Sound.test_step(model, data, options)


class EagerPenalty(DoubleBackward):
    """The same step, its penalty marked to run eagerly under torch.compile."""

    penalty = staticmethod(torch.compiler.disable(_input_gradient_penalty))


@pytest.mark.slow
def test_compiled_check_names_the_remedy_for_what_cannot_compile():
    with pytest.raises(ConformanceError) as excinfo:
        check_step("double-backward", plugin=DoubleBackward(), checks=["compiled"])
    message = _failure(excinfo)
    assert "compiled: failed" in message
    assert "fit() with compile(jit_compile=True) raised StepError" in message
    assert "@torch.compiler.disable" in message
    torch._dynamo.reset()  # forget the failure: the same frames follow
    assert check_step("eager-penalty", plugin=EagerPenalty(), checks=["compiled"]).ok


def test_compiled_is_run_only_when_named():
    assert "compiled" not in CHECKS
    report = check_step("sound", plugin=Sound, checks=["hooks"])
    assert "compiled" not in report.results
