"""Importing keras_steps insists on the torch backend, with one clear error."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _import(env_backend):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if env_backend is not None:
        env["KERAS_BACKEND"] = env_backend
    code = "import keras_steps, keras; print(keras.backend.backend())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_other_backend_is_one_clear_error():
    result = _import("numpy")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("keras_steps._errors.BackendError: KERAS_BACKEND is 'numpy'")
    assert "export KERAS_BACKEND=torch" in last


def test_unset_backend_selects_torch():
    result = _import(None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"


def test_keras_already_imported_with_another_backend(monkeypatch):
    import keras

    from keras_steps._backend import require_torch_backend
    from keras_steps._errors import BackendError

    # Only torch is installed here, so another live backend is simulated.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(BackendError, match="imported with the 'jax' backend.*KERAS_BACKEND=torch"):
        require_torch_backend()
