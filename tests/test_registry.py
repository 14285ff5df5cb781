"""The registry: names, sources, entry points, environment variables, errors."""


import keras
import numpy as np
import pytest
from plugin_factory import GOOD_STEP, forget_modules, write_distribution

import keras_steps
from keras_steps import _registry


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install fake distributions by putting their dist-info on sys.path."""
    added = []

    def install(dist, modules, entry_points, version="1.0"):
        site = write_distribution(tmp_path / dist, dist, modules, entry_points, version)
        monkeypatch.syspath_prepend(str(site))
        added.extend(modules)
        _registry.reset()
        return site

    yield install
    forget_modules(added)


def _tiny_model(step, **kw):
    inputs = keras.Input((3,))
    return keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs), step=step, **kw)


def test_core_supervised_is_always_there():
    step = keras_steps.get_step("supervised")
    assert step.source.kind == "core"
    assert str(step.source) == "core"
    assert step.model_roles == ("model",)
    assert "supervised" in [s.name for s in keras_steps.list_steps()]


def test_unknown_step_lists_available_and_suggests_closest():
    with pytest.raises(keras_steps.UnknownStepError) as err:
        keras_steps.get_step("supervized")
    msg = str(err.value)
    assert "Did you mean 'supervised'" in msg
    assert "Available steps: " in msg
    assert isinstance(err.value, keras_steps.StepError)
    assert isinstance(err.value, ValueError)


def test_unknown_step_in_model_constructor():
    with pytest.raises(keras_steps.UnknownStepError, match="supervised"):
        _tiny_model("supervisd")


def test_entry_point_plugin_is_discovered(installed):
    installed("ks-good", {"ks_good": GOOD_STEP}, {"good": "ks_good"}, version="2.3")
    step = keras_steps.get_step("good")
    assert step.source.kind == "plugin"
    assert str(step.source) == "ks-good 2.3"
    assert step.summary.startswith("A step that trains")
    model = _tiny_model("good", step_options={"scale": 2.0})
    model.compile(optimizer="sgd")
    x = np.random.rand(64, 3).astype("float32")
    history = model.fit(x, x.sum(1, keepdims=True), epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


def test_entry_point_object_form(installed):
    code = GOOD_STEP + "\n\nclass Holder:\n    pass\n\nplugin = Holder()\n"
    code += "for _n in ('step_options', 'step_build', 'train_step', 'test_step'):\n"
    code += "    setattr(plugin, _n, globals()[_n])\n"
    installed("ks-obj", {"ks_obj": code}, {"objstep": "ks_obj:plugin"})
    assert keras_steps.get_step("objstep").source.entry_point == "ks_obj:plugin"


def test_disable_autoload_leaves_only_core(installed, monkeypatch):
    installed("ks-good", {"ks_good": GOOD_STEP}, {"good": "ks_good"})
    monkeypatch.setenv("KERAS_STEPS_DISABLE_PLUGIN_AUTOLOAD", "1")
    _registry.reset()
    assert [s.name for s in keras_steps.list_steps()] == ["supervised"]


def test_load_plugins_selects_entry_points_and_warns_on_unknown(installed, monkeypatch):
    installed(
        "ks-good",
        {"ks_good": GOOD_STEP, "ks_other": GOOD_STEP},
        {"good": "ks_good", "other": "ks_other"},
    )
    monkeypatch.setenv("KERAS_STEPS_LOAD_PLUGINS", " good , nope ")
    _registry.reset()
    with pytest.warns(keras_steps.PluginLoadWarning, match="'nope'"):
        names = [s.name for s in keras_steps.list_steps()]
    assert names == ["good", "supervised"]


def test_broken_plugin_warns_and_others_still_load(installed):
    installed(
        "ks-mixed",
        {"ks_good": GOOD_STEP, "ks_broken": "raise RuntimeError('boom at import')\n"},
        {"good": "ks_good", "broken": "ks_broken"},
    )
    with pytest.warns(keras_steps.PluginLoadWarning) as record:
        names = [s.name for s in keras_steps.list_steps()]
    assert "good" in names and "broken" not in names
    msg = str(record[0].message)
    assert "'broken'" in msg and "ks-mixed 1.0" in msg and "boom at import" in msg
    with pytest.raises(keras_steps.PluginError, match="boom at import"):
        keras_steps.get_step("broken")
    assert "broken" in keras_steps.list_problems()


def test_two_distributions_with_one_name_conflict(installed, tmp_path, monkeypatch):
    installed("ks-a", {"ks_a": GOOD_STEP}, {"same": "ks_a"})
    installed("ks-b", {"ks_b": GOOD_STEP}, {"same": "ks_b"})
    with pytest.raises(keras_steps.StepConflictError) as err:
        keras_steps.get_step("same")
    msg = str(err.value)
    assert "ks-a 1.0" in msg and "ks-b 1.0" in msg
    assert "KERAS_STEPS_LOAD_PLUGINS" in msg
    assert "same" not in [s.name for s in keras_steps.list_steps()]
    monkeypatch.setenv("KERAS_STEPS_LOAD_PLUGINS", "ks-b:same")
    _registry.reset()
    assert str(keras_steps.get_step("same").source) == "ks-b 1.0"


def test_plugin_cannot_shadow_core_step_silently(installed):
    installed("ks-shadow", {"ks_shadow": GOOD_STEP}, {"supervised": "ks_shadow"})
    with pytest.raises(keras_steps.StepConflictError, match="core"):
        keras_steps.get_step("supervised")


class LocalStep:
    """A step defined in a notebook."""

    @keras_steps.hookimpl
    def train_step(self, model, data):
        return keras.Model.train_step(model, data)

    @keras_steps.hookimpl
    def test_step(self, model, data):
        return keras.Model.test_step(model, data)


def test_register_and_unregister_local_step():
    step = keras_steps.register_step(LocalStep(), name="mine")
    assert step.source.kind == "local" and step.summary == "A step defined in a notebook."
    assert keras_steps.get_step("mine") is step
    # Re-running the notebook cell replaces the local step.
    again = keras_steps.register_step(LocalStep(), name="mine")
    assert keras_steps.get_step("mine") is again
    keras_steps.unregister_step("mine")
    with pytest.raises(keras_steps.UnknownStepError):
        keras_steps.get_step("mine")
    with pytest.raises(keras_steps.UnknownStepError):
        keras_steps.unregister_step("mine")


def test_local_step_cannot_take_an_installed_name():
    with pytest.raises(keras_steps.StepConflictError, match="unregister_step"):
        keras_steps.register_step(LocalStep(), name="supervised")


def test_invalid_step_name():
    with pytest.raises(keras_steps.StepError, match="not valid"):
        keras_steps.register_step(LocalStep(), name="has space")


def test_misspelled_hook_is_an_error_naming_plugin_and_hook():
    class Typo(LocalStep):
        @keras_steps.hookimpl
        def train_stepp(self, model, data):
            pass

    with pytest.raises(keras_steps.PluginError) as err:
        keras_steps.register_step(Typo(), name="typo")
    assert "'train_stepp'" in str(err.value) and "'typo'" in str(err.value)
    assert "Did you mean 'train_step'" in str(err.value)
    # Nothing half-registered is left behind.
    with pytest.raises(keras_steps.UnknownStepError):
        keras_steps.get_step("typo")


def test_wrong_hook_signature_is_an_error_naming_plugin_and_hook():
    class Wrong(LocalStep):
        @keras_steps.hookimpl
        def test_step(self, model, batch):
            pass

    with pytest.raises(keras_steps.PluginError) as err:
        keras_steps.register_step(Wrong(), name="wrong")
    assert "'wrong'" in str(err.value) and "test_step" in str(err.value)
    assert "batch" in str(err.value)


def test_missing_required_hook():
    class NoTrain:
        @keras_steps.hookimpl
        def test_step(self, model, data):
            pass

    with pytest.raises(keras_steps.PluginError, match="required hook.*train_step"):
        keras_steps.register_step(NoTrain(), name="notrain")


def test_test_step_is_optional():
    class TrainOnly:
        @keras_steps.hookimpl
        def train_step(self, model, data):
            pass

    keras_steps.register_step(TrainOnly(), name="trainonly")
    assert "test_step" not in keras_steps.get_step("trainonly").hooks


def test_misspelled_hook_in_installed_plugin_reported_not_raised(installed):
    code = GOOD_STEP + "\n@keras_steps.hookimpl\ndef step_opitons():\n    return Options\n"
    installed(
        "ks-typo", {"ks_typo": code, "ks_good": GOOD_STEP}, {"typo": "ks_typo", "good": "ks_good"}
    )
    with pytest.warns(keras_steps.PluginLoadWarning, match="step_opitons"):
        keras_steps.list_steps()
    assert keras_steps.get_step("good")
    with pytest.raises(keras_steps.PluginError, match="step_opitons"):
        keras_steps.get_step("typo")


def test_bad_role_declarations_are_plugin_errors():
    class BadRoles(LocalStep):
        @keras_steps.hookimpl
        def step_model_roles(self):
            return ("a", "a")

    with pytest.raises(keras_steps.PluginError, match="distinct role names"):
        keras_steps.register_step(BadRoles(), name="badroles")

    class NoCall(LocalStep):
        @keras_steps.hookimpl
        def step_model_roles(self):
            return ("a", "b")

    with pytest.raises(keras_steps.PluginError, match="step_call"):
        keras_steps.register_step(NoCall(), name="nocall")


def test_same_plugin_object_twice():
    plugin = LocalStep()
    keras_steps.register_step(plugin, name="first")
    with pytest.raises(keras_steps.StepConflictError, match="'first'"):
        keras_steps.register_step(plugin, name="second")


def test_options_hook_must_return_step_options():
    class BadOptions(LocalStep):
        @keras_steps.hookimpl
        def step_options(self):
            return dict

    with pytest.raises(keras_steps.PluginError, match="StepOptions"):
        keras_steps.register_step(BadOptions(), name="badopts")


def test_public_api_is_exported():
    for name in keras_steps.__all__:
        assert hasattr(keras_steps, name), name
    assert keras_steps.hookimpl.project_name == "keras_steps"
    assert keras_steps.hookspec.project_name == "keras_steps"
