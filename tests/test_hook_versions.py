"""Hook versions: new optional hooks keep old plugins working, deprecations warn."""

from __future__ import annotations

import re
import warnings

import keras
import numpy as np
import pytest

import keras_steps
from keras_steps import _registry, hookimpl, hookspecs
from keras_steps.hookspecs import HookDeprecationWarning
from keras_steps.testing import hook_problems


class OldPlugin:
    """A plugin written against keras-steps 0.1: the two required hooks only."""

    @hookimpl
    def train_step(model, data):
        return keras.Model.train_step(model, data)

    @hookimpl
    def test_step(model, data):
        return keras.Model.test_step(model, data)


def _extend_hookspecs(monkeypatch, name, spec):
    monkeypatch.setattr(hookspecs, name, spec, raising=False)
    _registry.reset()  # the next lookup builds a manager from the extended specs


def test_every_hook_says_which_version_added_it():
    versions = hookspecs.hook_versions()
    specs = [
        n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "keras_steps_spec")
    ]
    assert sorted(versions) == sorted(specs)
    assert all(re.fullmatch(r"\d+\.\d+", v) for v in versions.values()), versions


def test_deprecated_hooks_say_so_in_their_docstrings():
    for name, (since, _) in hookspecs.DEPRECATED.items():
        assert f"Deprecated in {since}." in getattr(hookspecs, name).__doc__


def test_a_new_optional_hook_keeps_old_plugins_working(monkeypatch):
    @hookspecs.hookspec(firstresult=True)
    def step_describe(options):
        """Describe the step's configuration in one line. Added in 9.9."""

    _extend_hookspecs(monkeypatch, "step_describe", step_describe)
    assert hookspecs.hook_versions()["step_describe"] == "9.9"

    old = keras_steps.register_step(OldPlugin, name="old")
    assert "step_describe" not in old.hooks
    assert hook_problems(OldPlugin, "old") == []
    inputs = keras.Input((3,))
    model = keras_steps.StepModel(inputs, keras.layers.Dense(1)(inputs), step="old")
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2

    class NewPlugin(OldPlugin):
        """Implements the new hook too."""

        @hookimpl
        def step_describe(options):
            return "new"

    new = keras_steps.register_step(NewPlugin, name="new")
    assert new.hooks["step_describe"](None) == "new"


class FromTheFuture(OldPlugin):
    """Implements a hook this keras-steps does not know, marked optional."""

    @hookimpl(optionalhook=True)
    def step_added_in_a_later_version(model):
        return None


class FromTheFutureUnmarked(OldPlugin):
    """The same hook without optionalhook: indistinguishable from a typo."""

    @hookimpl
    def step_added_in_a_later_version(model):
        return None


def test_a_plugin_for_a_newer_version_loads_when_it_marks_new_hooks_optional():
    keras_steps.register_step(FromTheFuture, name="future")
    assert hook_problems(FromTheFuture, "future") == []
    with pytest.raises(keras_steps.PluginError, match="step_added_in_a_later_version"):
        keras_steps.register_step(FromTheFutureUnmarked, name="future-typo")


def test_a_deprecated_hook_warns_the_plugin_author_and_keeps_working(monkeypatch):
    monkeypatch.setattr(hookspecs, "DEPRECATED", dict(hookspecs.DEPRECATED))

    @hookspecs.deprecated(since="0.1", instead="Return the trackers from step_build.")
    @hookspecs.hookspec(firstresult=True)
    def step_metrics(model):
        """Return the step's metric trackers. Deprecated in 0.1. Added in 0.1."""

    _extend_hookspecs(monkeypatch, "step_metrics", step_metrics)
    assert hookspecs.DEPRECATED["step_metrics"] == (
        "0.1",
        "Return the trackers from step_build.",
    )

    class UsesOldHook(OldPlugin):
        """Still implements step_metrics."""

        @hookimpl
        def step_metrics(model):
            return []

    with pytest.warns(HookDeprecationWarning) as record:
        step = keras_steps.register_step(UsesOldHook, name="uses-old-hook")
    (warning,) = record
    assert str(warning.message) == (
        "Hook 'step_metrics' is deprecated since keras-steps 0.1 and will be "
        "removed in a later version. Return the trackers from step_build."
    )
    # pluggy points at the implementation, so the author sees where to look.
    assert warning.filename == __file__
    assert warning.lineno == UsesOldHook.step_metrics.__code__.co_firstlineno
    assert step.hooks["step_metrics"](None) == []
    # Plugins that do not implement it are not bothered.
    with warnings.catch_warnings():
        warnings.simplefilter("error", HookDeprecationWarning)
        keras_steps.register_step(OldPlugin, name="old")


def test_deprecated_must_decorate_a_hookspec():
    with pytest.raises(TypeError, match="above @hookspec"):

        @hookspecs.deprecated(since="0.1", instead="x")
        def not_a_spec():
            """Not marked."""
