"""``keras-steps check`` on installed plugin distributions, sound and broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from plugin_factory import readme_step, write_distribution

import keras_steps
from keras_steps import _cli, _registry, hookspecs

SOUND = '''
    """A sound step: Keras's own training."""
    import keras
    from pydantic import Field
    import keras_steps

    class Options(keras_steps.StepOptions):
        scale: float = Field(1.0, gt=0, description="Unused.")

    @keras_steps.hookimpl
    def step_options():
        return Options

    @keras_steps.hookimpl
    def train_step(model, data):
        return keras.Model.train_step(model, data)

    @keras_steps.hookimpl
    def test_step(model, data):
        return keras.Model.test_step(model, data)
'''

MISSPELLED = '''
    """Implements trian_step."""
    import keras_steps

    @keras_steps.hookimpl
    def trian_step(model, data):
        return {}

    @keras_steps.hookimpl
    def test_step(model, data):
        return {}
'''

WRONG_SIGNATURE = '''
    """train_step takes a batch argument the hook does not have."""
    import keras_steps

    @keras_steps.hookimpl
    def train_step(model, batch):
        return {}

    @keras_steps.hookimpl
    def test_step(model, data):
        return {}
'''

NO_DEFAULTS = SOUND.replace('Field(1.0, gt=0, description="Unused.")', "Field(gt=0)")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site-packages folder on sys.path, and a clean plugin environment."""
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("KERAS_STEPS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("KERAS_STEPS_LOAD_PLUGINS", raising=False)
    return tmp_path


def _dist(root, dist, step, module, source, version="1.0"):
    return write_distribution(root, dist, {module: source}, {step: module}, version)


def _check(capsys, *args):
    rc = _cli.main(["check", *args])
    out = capsys.readouterr().out
    return rc, (json.loads(out) if "--json" in args else out)


def _plugin(result, name, dist=None):
    (found,) = [
        p
        for p in result["plugins"]
        if p["name"] == name and dist in (None, p["source"]["distribution"])
    ]
    return found


def test_sound_plugins_pass(site, capsys):
    _dist(site, "ks-sound", "sound-step", "ks_sound_mod", SOUND, version="2.3")
    rc, out = _check(capsys)
    assert rc == 0, out
    assert "all sound" in out
    assert "ok      sound-step" in out
    assert "ks-sound 2.3 (ks_sound_mod)" in out
    assert "options: scale; requires keras-steps >= 0.1" in out


def test_broken_plugins_are_each_reported_and_exit_nonzero(site, capsys):
    _dist(site, "ks-sound", "sound-step", "ks_sound_mod2", SOUND)
    _dist(site, "ks-broken", "broken", "ks_broken_mod", "import not_installed_xyz\n")
    _dist(site, "ks-typo", "typo", "ks_typo_mod", MISSPELLED)
    _dist(site, "ks-signature", "signature", "ks_signature_mod", WRONG_SIGNATURE)
    _dist(site, "ks-nodefaults", "nodefaults", "ks_nodefaults_mod", NO_DEFAULTS)
    rc, out = _check(capsys)
    assert rc == 1
    assert "4 with problems" in out
    assert "ok      sound-step" in out
    assert (
        "import: Plugin entry point 'broken' = 'ks_broken_mod' from distribution "
        "ks-broken 1.0 failed to import: ModuleNotFoundError: No module named "
        "'not_installed_xyz'"
    ) in out
    assert "FAILED  typo" in out and "Did you mean 'train_step'?" in out
    assert "FAILED  signature" in out and "{'batch'}" in out
    assert "FAILED  nodefaults" in out
    assert "option 'scale' has no default" in out
    assert "option 'scale' has no description" in out

    rc, result = _check(capsys, "--json")
    assert rc == 1 and result["ok"] is False
    assert _plugin(result, "sound-step")["ok"] is True
    assert _plugin(result, "sound-step")["options"]["properties"]["scale"]["default"] == 1
    assert list(_plugin(result, "broken")["errors"]) == ["import"]
    assert list(_plugin(result, "typo")["errors"]) == ["hooks"]
    assert list(_plugin(result, "nodefaults")["errors"]) == ["options"]
    assert _plugin(result, "broken")["source"]["distribution"] == "ks-broken"


def test_a_name_provided_twice_is_a_conflict_until_the_environment_picks_one(
    site, capsys, monkeypatch
):
    _dist(site, "ks-first", "twice", "ks_first_mod", SOUND)
    _dist(site, "ks-second", "twice", "ks_second_mod", SOUND)
    rc, result = _check(capsys, "--json")
    assert rc == 1
    assert result["conflicts"] == {
        "twice": ["ks-first 1.0 (ks_first_mod)", "ks-second 1.0 (ks_second_mod)"]
    }
    (message,) = _plugin(result, "twice", "ks-first")["errors"]["conflict"]
    assert "also provided by ks-second 1.0 (ks_second_mod)" in message
    assert "KERAS_STEPS_LOAD_PLUGINS=ks-first:twice" in message
    assert "KERAS_STEPS_LOAD_PLUGINS=ks-second:twice" in message

    monkeypatch.setenv("KERAS_STEPS_LOAD_PLUGINS", "ks-second:twice")
    rc, result = _check(capsys, "--json")
    assert rc == 0
    first = _plugin(result, "twice", "ks-first")
    assert first["enabled"] is False and first["ok"] is True
    assert "environment variables select one" in first["warnings"][0]
    rc, out = _check(capsys)
    assert "[not loaded: environment variables]" in out


def test_a_plugin_named_like_the_core_step_is_refused_and_the_core_is_sound(site, capsys):
    _dist(site, "ks-shadow", "supervised", "ks_shadow_mod", SOUND)
    rc, result = _check(capsys, "--json")
    assert rc == 1
    assert _plugin(result, "supervised", "ks-shadow")["ok"] is False
    (message,) = _plugin(result, "supervised", "ks-shadow")["errors"]["conflict"]
    assert "from distribution ks-shadow 1.0 is refused" in message
    assert "core step" in message
    core = [p for p in result["plugins"] if p["source"]["kind"] == "core"]
    assert core[0]["ok"] is True and core[0]["warnings"] == []
    assert "supervised" not in result["conflicts"]


def test_the_readme_class_published_as_an_entry_point_is_ok(site, capsys):
    write_distribution(
        site,
        "my-package",
        {"readme_check": readme_step()},
        {"scaled-mse": "readme_check:ScaledMSE"},
    )
    rc, result = _check(capsys, "--json")
    found = _plugin(result, "scaled-mse")
    assert found["ok"] is True, found["errors"]
    assert rc == 0
    assert found["hooks"] == ["step_build", "step_options", "test_step", "train_step"]
    assert found["options"]["properties"]["scale"]["default"] == 1


REGISTERS_AT_IMPORT = (
    SOUND
    + """
    class Extra:
        @keras_steps.hookimpl
        def train_step(self, model, data):
            return {}

        @keras_steps.hookimpl
        def test_step(self, model, data):
            return {}

    keras_steps.register_step(Extra(), name="extra-at-import")
"""
)

OPTIONS_RAISE = SOUND.replace("return Options", "raise TypeError('options went wrong')")


def test_check_fails_what_the_runtime_cannot_load(site, capsys):
    """Each of these loaded badly at runtime while check said "ok" or crashed."""
    _dist(site, "ks-registers", "registers", "ks_registers_mod", REGISTERS_AT_IMPORT)
    _dist(site, "ks-raises", "raises", "ks_raises_mod", OPTIONS_RAISE)
    rc, result = _check(capsys, "--json")
    assert rc == 1
    (message,) = _plugin(result, "registers")["errors"]["import"]
    assert "ks-registers 1.0 failed to import: PluginError" in message
    assert "keras_steps.register_step() was called while keras_steps was loading" in message
    (message,) = _plugin(result, "raises")["errors"]["hooks"]
    assert "'raises' (ks-raises 1.0) raised TypeError: options went wrong" in message
    # check left the process's own registry alone; loading it fails the same way.
    _registry.reset()
    with pytest.warns(keras_steps.PluginLoadWarning):
        names = [s.name for s in keras_steps.list_steps()]
    assert "extra-at-import" not in names and "registers" not in names
    assert {"registers", "raises"} <= set(keras_steps.list_problems())
    _registry.reset()


def test_deprecated_hooks_warn_without_failing(site, capsys, monkeypatch):
    monkeypatch.setattr(hookspecs, "DEPRECATED", dict(hookspecs.DEPRECATED))

    @hookspecs.deprecated(since="0.1", instead="Use step_build.")
    @hookspecs.hookspec(firstresult=True)
    def step_metrics(model):
        """Deprecated in 0.1. Added in 0.1."""

    monkeypatch.setattr(hookspecs, "step_metrics", step_metrics, raising=False)
    source = SOUND + (
        "\n    @keras_steps.hookimpl\n    def step_metrics(model):\n        return []\n"
    )
    _dist(site, "ks-old", "old", "ks_old_mod", source)
    rc, out = _check(capsys)
    assert rc == 0
    assert "warn    old" in out
    assert "warning: Hook 'step_metrics' is deprecated since keras-steps 0.1" in out


@pytest.mark.slow
def test_console_script_reports_installed_plugins(tmp_path):
    site = _dist(tmp_path, "ks-broken", "broken", "ks_broken_cli", "raise RuntimeError('x')\n")
    env = {**os.environ, "PYTHONPATH": str(site), "KERAS_BACKEND": "torch"}
    env.pop("KERAS_STEPS_LOAD_PLUGINS", None)
    env.pop("KERAS_STEPS_DISABLE_PLUGIN_AUTOLOAD", None)
    script = os.path.join(os.path.dirname(sys.executable), "keras-steps")
    done = subprocess.run([script, "check", "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert "RuntimeError: x" in _plugin(result, "broken")["errors"]["import"][0]


def test_list_runs_with_hostile_plugins_installed(site, capsys):
    """`keras-steps list` used to print a traceback and exit 1 with the README's class."""
    write_distribution(
        site,
        "my-package",
        {"readme_list": readme_step(), "ks_raises_list": OPTIONS_RAISE},
        {"scaled-mse": "readme_list:ScaledMSE", "raises": "ks_raises_list"},
    )
    _registry.reset()
    with pytest.warns(keras_steps.PluginLoadWarning, match="options went wrong"):
        rc = _cli.main(["list"])
    captured = capsys.readouterr()
    assert rc == 0
    (line,) = [ln for ln in captured.out.splitlines() if ln.startswith("scaled-mse ")]
    assert line.split()[1:3] == ["my-package", "1.0"]
    assert line.endswith("Mean squared error times a scale.")
    assert "unusable: raises: Plugin for step 'raises' (my-package 1.0) raised TypeError" in (
        captured.err
    )
    _registry.reset()
