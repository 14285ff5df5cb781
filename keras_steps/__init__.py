"""keras-steps: Keras 3 training steps (PyTorch backend) as named, validated plugins.

Pick a training algorithm by name instead of overriding ``train_step``::

    import keras_steps
    model = keras_steps.StepModel(inputs, outputs, step="supervised")

Steps are pluggy plugins: see :mod:`keras_steps.hookspecs` for the hooks and
the ``keras_steps`` entry-point group for publishing one.

Importing ``keras_steps`` selects Keras's torch backend (or raises
``BackendError`` for another); torch and Keras themselves are imported when
a name of the package is first used, so that ``keras-steps --help`` does
not wait for them. Under ``torchrun`` everything is imported at once, so
each process takes its own GPU before any layer is built.
"""

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING

from keras_steps._backend import select_torch_backend as _select_torch_backend
from keras_steps._errors import (
    ArgumentError,
    BackendError,
    DamagedFileError,
    DistributedError,
    OptionsError,
    PluginError,
    RoleError,
    StepConflictError,
    StepError,
    UnknownStepError,
)
from keras_steps._version import __version__

_select_torch_backend()

if TYPE_CHECKING:  # the lazy names, for type checkers and the API docs (griffe)
    from keras_steps import callbacks
    from keras_steps._arguments import Refused
    from keras_steps._backprop import backprop
    from keras_steps._distributed import batch_random
    from keras_steps._model import StepModel
    from keras_steps._options import StepOptions
    from keras_steps._registry import (
        ENTRY_POINT_GROUP,
        PluginLoadWarning,
        get_step,
        list_problems,
        list_steps,
        register_step,
        unregister_step,
    )
    from keras_steps._saving import load_model
    from keras_steps._seeds import MAX_SEED, seed_field
    from keras_steps._step import Step, StepSource
    from keras_steps.hookspecs import hookimpl, hookspec

# Public name -> the module that defines it, imported on first use (PEP 562).
# One line per name keeps additions easy to merge; a new name also goes in
# the TYPE_CHECKING imports above (tests/test_cli.py checks both agree).
_LAZY = {
    "ENTRY_POINT_GROUP": "keras_steps._registry",
    "MAX_SEED": "keras_steps._seeds",
    "Refused": "keras_steps._arguments",
    "PluginLoadWarning": "keras_steps._registry",
    "Step": "keras_steps._step",
    "StepModel": "keras_steps._model",
    "StepOptions": "keras_steps._options",
    "StepSource": "keras_steps._step",
    "backprop": "keras_steps._backprop",
    "batch_random": "keras_steps._distributed",
    "callbacks": "keras_steps.callbacks",
    "get_step": "keras_steps._registry",
    "hookimpl": "keras_steps.hookspecs",
    "hookspec": "keras_steps.hookspecs",
    "list_problems": "keras_steps._registry",
    "list_steps": "keras_steps._registry",
    "load_model": "keras_steps._saving",
    "register_step": "keras_steps._registry",
    "seed_field": "keras_steps._seeds",
    "unregister_step": "keras_steps._registry",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "MAX_SEED",
    "ArgumentError",
    "BackendError",
    "DamagedFileError",
    "DistributedError",
    "OptionsError",
    "PluginError",
    "PluginLoadWarning",
    "Refused",
    "RoleError",
    "Step",
    "StepConflictError",
    "StepError",
    "StepModel",
    "StepOptions",
    "StepSource",
    "UnknownStepError",
    "__version__",
    "backprop",
    "batch_random",
    "callbacks",
    "get_step",
    "hookimpl",
    "hookspec",
    "list_problems",
    "list_steps",
    "load_model",
    "register_step",
    "seed_field",
    "unregister_step",
]


def _load_torch_side() -> None:
    """Import Keras and torch: check the backend Keras came up with, pick the GPU."""
    from keras_steps import _backend, _distributed

    _backend.require_torch_backend()
    # Under torchrun, each process takes its own GPU before any layer is built.
    _distributed.select_device()


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_steps' has no attribute {name!r}")
    _load_torch_side()
    value = _importlib.import_module(module)
    if name != module.rsplit(".", 1)[-1]:
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "LOCAL_RANK" in _os.environ:
    # torchrun: a layer the script builds before touching keras_steps would
    # otherwise land on GPU 0 in every process.
    _load_torch_side()
