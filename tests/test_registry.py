"""The registry: names, sources, entry points, environment variables, errors."""

import threading

import keras
import numpy as np
import pytest
from plugin_factory import GOOD_STEP, forget_modules, readme_step, write_distribution

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


def _trains(step=None, **kw):
    model = _tiny_model(step, **kw) if step else _tiny_model("supervised")
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((32, 3)).astype("float32")
    history = model.fit(x, x.sum(1, keepdims=True), epochs=2, verbose=0).history
    return history["loss"][-1] < history["loss"][0]


def test_a_plugin_claiming_the_core_name_is_refused_and_the_core_step_works(installed):
    installed(
        "ks-shadow",
        {"ks_shadow": GOOD_STEP + "\nraise RuntimeError('this import must not run')\n"},
        {"supervised": "ks_shadow"},
    )
    with pytest.warns(keras_steps.PluginLoadWarning) as record:
        step = keras_steps.get_step("supervised")
    assert step.source.kind == "core"
    (message,) = [str(w.message) for w in record]
    assert "'supervised'" in message and "ks-shadow 1.0" in message
    assert "refused" in message and "core step" in message
    assert "must not run" not in message  # refused by name, never imported
    problems = keras_steps.list_problems()
    assert list(problems) == ["ks-shadow:supervised"]
    assert isinstance(problems["ks-shadow:supervised"], keras_steps.StepConflictError)
    assert "supervised" in [s.name for s in keras_steps.list_steps()]
    assert _trains()  # the default step of StepModel


def test_the_core_step_cannot_be_unregistered_or_replaced_locally():
    with pytest.raises(keras_steps.StepConflictError, match="core step"):
        keras_steps.unregister_step("supervised")
    with pytest.raises(keras_steps.StepConflictError, match="core step"):
        keras_steps.register_step(LocalStep(), name="supervised")
    assert keras_steps.get_step("supervised").source.kind == "core"


def test_the_readme_class_published_as_an_entry_point_works_as_its_instance(installed):
    installed(
        "my-package", {"readme_steps": readme_step()}, {"scaled-mse": "readme_steps:ScaledMSE"}
    )
    step = keras_steps.get_step("scaled-mse")
    assert type(step.plugin).__name__ == "ScaledMSE"  # an instance, made once
    assert step.summary == "Mean squared error times a scale."
    assert step.validate_options({"scale": 2.0}).scale == 2.0
    assert _trains("scaled-mse", step_options={"scale": 2.0})
    assert _trains()
    assert "scaled-mse" not in keras_steps.list_problems()


def test_a_class_given_locally_works_as_its_instance():
    step = keras_steps.register_step(LocalStep, name="from-class")
    assert isinstance(step.plugin, LocalStep)
    assert _trains("from-class")
    keras_steps.unregister_step("from-class")


def test_a_class_that_needs_arguments_is_refused_asking_for_an_instance(installed):
    code = GOOD_STEP + (
        "\nclass NeedsArgs:\n"
        "    def __init__(self, scale):\n"
        "        self.scale = scale\n"
        "    @keras_steps.hookimpl\n"
        "    def train_step(self, model, data):\n"
        "        return {}\n"
        "    @keras_steps.hookimpl\n"
        "    def test_step(self, model, data):\n"
        "        return {}\n"
    )
    installed(
        "ks-args",
        {"ks_args": code, "ks_good": GOOD_STEP},
        {"args": "ks_args:NeedsArgs", "good": "ks_good"},
    )
    with pytest.warns(keras_steps.PluginLoadWarning, match="Pass an instance"):
        keras_steps.list_steps()
    with pytest.raises(keras_steps.PluginError) as err:
        keras_steps.get_step("args")
    message = str(err.value)
    assert "'args'" in message and "ks-args 1.0" in message
    assert "NeedsArgs() raised TypeError" in message and "'scale'" in message
    assert keras_steps.get_step("good") and _trains()


# Each raises something other than a StepError at a different point of loading.
_HOSTILE = {
    "hooks-typeerror": (
        "class Unbound:\n"
        "    @keras_steps.hookimpl\n"
        "    @staticmethod\n"
        "    def step_options():\n"
        "        raise TypeError('options went wrong')\n"
        "    @keras_steps.hookimpl\n"
        "    @staticmethod\n"
        "    def train_step(model, data):\n"
        "        return {}\n"
        "    @keras_steps.hookimpl\n"
        "    @staticmethod\n"
        "    def test_step(model, data):\n"
        "        return {}\n"
        "plugin = Unbound\n",
        "TypeError: options went wrong",
    ),
    "roles-keyerror": (
        GOOD_STEP + "\n@keras_steps.hookimpl\ndef step_model_roles():\n    return {}['roles']\n",
        "KeyError: 'roles'",
    ),
    "exits": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    "init-fails": (
        "class Step:\n"
        "    def __init__(self):\n"
        "        raise ZeroDivisionError('no instance')\n"
        "    @keras_steps.hookimpl\n"
        "    def train_step(self, model, data):\n"
        "        return {}\n"
        "    @keras_steps.hookimpl\n"
        "    def test_step(self, model, data):\n"
        "        return {}\n"
        "plugin = Step\n",
        "ZeroDivisionError: no instance",
    ),
}


def test_whatever_a_plugin_raises_fails_only_that_plugin(installed):
    modules = {
        f"ks_hostile_{i}": "import keras_steps\n" + code
        for i, (code, _) in enumerate(_HOSTILE.values())
    }
    entry_points = {
        name: f"ks_hostile_{i}" + (":plugin" if "plugin =" in code else "")
        for i, (name, (code, _)) in enumerate(_HOSTILE.items())
    }
    installed("ks-hostile", {**modules, "ks_good": GOOD_STEP}, {**entry_points, "good": "ks_good"})
    with pytest.warns(keras_steps.PluginLoadWarning) as record:
        names = [s.name for s in keras_steps.list_steps()]
    assert {"good", "supervised"} <= set(names) and not set(_HOSTILE) & set(names)
    warned = [str(w.message) for w in record]
    problems = keras_steps.list_problems()
    assert set(_HOSTILE) <= set(problems)
    for name, (_, error) in _HOSTILE.items():
        (message,) = [m for m in warned if f"'{name}'" in m]
        assert "ks-hostile 1.0" in message and error in message, message
        assert isinstance(problems[name], keras_steps.PluginError)
        with pytest.raises(keras_steps.PluginError, match=error):
            keras_steps.get_step(name)
    assert _trains("good") and _trains()


_REENTRANT = """
import keras_steps


class Extra:
    @keras_steps.hookimpl
    def train_step(self, model, data):
        return {}

    @keras_steps.hookimpl
    def test_step(self, model, data):
        return {}


keras_steps.%s
"""


@pytest.mark.parametrize(
    "call, expected",
    [
        ("register_step(Extra(), name='extra')", "declares each of its steps as an entry point"),
        ("get_step('supervised')", "Call it from a hook"),
        ("list_steps()", "Call it from a hook"),
    ],
)
def test_using_the_registry_from_a_plugin_import_is_an_error_not_a_hang(installed, call, expected):
    installed(
        "ks-reentrant",
        {"ks_reentrant": _REENTRANT % call, "ks_good": GOOD_STEP},
        {"reentrant": "ks_reentrant", "good": "ks_good"},
    )
    done = {}

    def load():
        with pytest.warns(keras_steps.PluginLoadWarning) as record:
            done["names"] = [s.name for s in keras_steps.list_steps()]
        done["warned"] = [str(w.message) for w in record]

    # The registry lock used to be taken twice by one thread: run in a
    # thread so that a regression fails the test instead of hanging it.
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the registry deadlocked on a plugin's import"
    assert {"good", "supervised"} <= set(done["names"]) and "reentrant" not in done["names"]
    (message,) = done["warned"]
    fn = call.split("(")[0]
    assert f"keras_steps.{fn}() was called while keras_steps was loading" in message
    assert "'reentrant' = 'ks_reentrant' from distribution ks-reentrant 1.0" in message
    assert expected in message
    assert "reentrant" in keras_steps.list_problems()
    # Once loaded, the same calls work from the user's code.
    assert keras_steps.get_step("supervised").source.kind == "core"


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


def test_local_step_cannot_take_an_installed_name(installed):
    installed("ks-good", {"ks_good": GOOD_STEP}, {"good": "ks_good"})
    with pytest.raises(keras_steps.StepConflictError, match="unregister_step"):
        keras_steps.register_step(LocalStep(), name="good")


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


def test_a_thread_started_and_awaited_by_a_plugin_import_times_out_clearly(installed, monkeypatch):
    code = (
        """
import threading
import keras_steps

errors = []


def use():
    try:
        keras_steps.list_steps()
    except keras_steps.StepError as exc:
        errors.append(str(exc))


helper = threading.Thread(target=use)
helper.start()
helper.join()
"""
        + GOOD_STEP
    )
    installed("ks-threads", {"ks_threads": code}, {"threads": "ks_threads"})
    monkeypatch.setattr(_registry, "WAIT_S", 0.5)
    done = {}
    thread = threading.Thread(target=lambda: done.update(step=keras_steps.get_step("threads")))
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the registry deadlocked on a plugin's helper thread"
    import ks_threads

    (message,) = ks_threads.errors
    assert "keras_steps.list_steps() waited 0.5 s for the registry" in message
    assert "'threads' = 'ks_threads' from distribution ks-threads 1.0" in message
    assert done["step"].source.distribution == "ks-threads"  # the plugin itself loads
