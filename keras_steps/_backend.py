"""Makes sure Keras runs on PyTorch before anything else is imported."""

from __future__ import annotations

import os
import sys

from keras_steps._errors import BackendError

_HOW_TO = (
    "keras_steps needs the PyTorch backend. Set it before Keras is imported, "
    "for example `export KERAS_BACKEND=torch` in the shell or "
    "`os.environ['KERAS_BACKEND'] = 'torch'` at the top of the script."
)


def select_torch_backend() -> None:
    """Select the torch backend if nothing chose one yet, else insist on it.

    Imports nothing: Keras is checked only if it is already imported.

    Raises:
        BackendError: ``KERAS_BACKEND`` names another backend, or Keras was
            already imported with one.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if requested is None and "keras" not in sys.modules:
        # keras_steps only works on torch, so importing it first is a clear
        # enough statement of intent; the env var also wins over keras.json.
        os.environ["KERAS_BACKEND"] = "torch"
    elif requested is not None and requested != "torch":
        raise BackendError(f"KERAS_BACKEND is {requested!r}. {_HOW_TO}")
    if "keras" in sys.modules:
        require_torch_backend()


def require_torch_backend() -> None:
    """Import Keras and insist that it runs on torch.

    Raises:
        BackendError: Keras runs on another backend.
    """
    import keras

    active = keras.backend.backend()
    if active != "torch":
        raise BackendError(f"Keras was imported with the {active!r} backend. {_HOW_TO}")
