"""The template plugin package (docs/template) builds, installs, passes its tests."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

TEMPLATE = pathlib.Path(__file__).parents[1] / "docs" / "template"


def _run(*args, **kwargs):
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_template_builds_installs_and_passes_its_tests(tmp_path):
    source = tmp_path / "template"
    shutil.copytree(TEMPLATE, source)
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "KERAS_BACKEND": "torch",
    }
    env.pop("KERAS_STEPS_LOAD_PLUGINS", None)
    env.pop("KERAS_STEPS_DISABLE_PLUGIN_AUTOLOAD", None)
    pip = [sys.executable, "-m", "pip"]
    # A real wheel, installed into a folder of its own: the test environment
    # stays as it was, and only the entry point makes the step visible.
    _run(
        *pip,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
        str(source),
        env=env,
    )
    (wheel,) = (tmp_path / "dist").glob("keras_steps_input_noise-0.1.0-*.whl")
    site = tmp_path / "site"
    _run(*pip, "install", "--no-deps", "--target", str(site), str(wheel), env=env)
    env["PYTHONPATH"] = str(site)
    shutil.rmtree(source / "src")  # the tests must use the installed package
    done = _run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        cwd=source,
        env=env,
    )
    # Its tests include the conformance kit and a check that the step comes
    # from the installed distribution's entry point.
    assert "4 passed" in done.stdout, done.stdout
