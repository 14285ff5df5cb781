"""The sdist and the wheel: metadata, LICENSE, py.typed, twine check, tests from the sdist.

The tests that build the archives are slow; the others read the tree.
"""

import email
import os
import re
import subprocess
import sys
import tarfile
import tokenize
import zipfile
from pathlib import Path

import pytest

import keras_steps

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=None, env=None):
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """``(sdist, wheel)`` built as a release would be (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: use this environment's setuptools rather than download one.
    _run("-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT))
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def unpacked_sdist(archives, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdist")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(folder, filter="data")
    (root,) = folder.iterdir()
    return root


def _wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


@pytest.mark.slow
def test_twine_check_passes_on_both(archives):
    result = _run("-m", "twine", "check", "--strict", *map(str, archives))
    assert result.stdout.count("PASSED") == 2, result.stdout


@pytest.mark.slow
def test_metadata_is_complete(archives):
    meta = _wheel_metadata(archives[1])
    assert meta["Version"] == keras_steps.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Documentation", "Source", "Changelog", "Issues"} <= set(urls)
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert "keras" in meta["Keywords"].split(",")
    assert meta["Description-Content-Type"] == "text/markdown"
    assert "tensorboard" in meta.get_all("Provides-Extra")


@pytest.mark.slow
def test_license_and_py_typed_are_in_both(archives):
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    with zipfile.ZipFile(archives[1]) as z:
        names = z.namelist()
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(license_name).decode() == license_text
        assert {"keras_steps/py.typed", "keras_steps_plugins/py.typed"} <= set(names)
    with tarfile.open(archives[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "keras_steps/py.typed",
            "plugins/keras_steps_plugins/py.typed"} <= names


def test_the_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert f'"{keras_steps.__version__}"' not in pyproject
    assert (ROOT / "keras_steps" / "_version.py").read_text().count(keras_steps.__version__) == 1


@pytest.mark.slow
def test_the_sdist_holds_every_test_and_helper(unpacked_sdist):
    def files(folder):
        return {
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        }

    here = files(ROOT / "tests")
    assert {"conftest.py", "_gan_testing.py", "step_checks.py"} <= here
    assert here <= files(unpacked_sdist / "tests")


@pytest.mark.slow
def test_the_sdists_tests_run_from_it(unpacked_sdist):
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    # Every test module imports from the unpacked tree alone.
    collected = _run("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                     "tests", cwd=unpacked_sdist, env=env)
    assert "error" not in collected.stdout.splitlines()[-1], collected.stdout[-2000:]
    # And a few of them pass there.
    _run("-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
         "tests/test_cli.py", "tests/test_registry.py", cwd=unpacked_sdist, env=env)


REPOSITORY_FOLDER = re.compile(r"\b(docs|tests|benchmarks|scripts)/\S")
# From Python 3.12 an f-string's text is FSTRING_MIDDLE tokens.
STRING_TOKENS = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def test_no_docstring_or_message_points_into_a_folder_that_is_not_installed():
    # Strings only (docstrings, messages): comments are for readers of the repository.
    installed = [ROOT / "keras_steps", ROOT / "plugins" / "keras_steps_plugins",
                 ROOT / "keras_steps_pytest"]
    for folder in installed:
        for path in folder.rglob("*.py"):
            with tokenize.open(path) as f:
                for token in tokenize.generate_tokens(f.readline):
                    if token.type in STRING_TOKENS:
                        assert not REPOSITORY_FOLDER.search(token.string), (
                            f"{path.relative_to(ROOT)}:{token.start[0]} names a folder that is "
                            f"not installed: {token.string[:200]}"
                        )
