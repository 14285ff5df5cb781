"""keras-steps: Keras 3 training steps (PyTorch backend) as named, validated plugins.

Pick a training algorithm by name instead of overriding ``train_step``::

    import keras_steps
    model = keras_steps.StepModel(inputs, outputs, step="supervised")

Steps are pluggy plugins: see :mod:`keras_steps.hookspecs` for the hooks and
the ``keras_steps`` entry-point group for publishing one.
"""

from keras_steps._backend import require_torch_backend

require_torch_backend()

from keras_steps import _distributed  # noqa: E402

# Under torchrun, each process takes its own GPU before any layer is built.
_distributed.select_device()

from keras_steps import callbacks  # noqa: E402  (keras_steps.callbacks.X after import keras_steps)
from keras_steps._arguments import Refused  # noqa: E402
from keras_steps._backprop import backprop  # noqa: E402
from keras_steps._distributed import batch_random  # noqa: E402
from keras_steps._errors import (  # noqa: E402
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
from keras_steps._model import StepModel  # noqa: E402
from keras_steps._options import StepOptions  # noqa: E402
from keras_steps._registry import (  # noqa: E402
    ENTRY_POINT_GROUP,
    PluginLoadWarning,
    get_step,
    list_problems,
    list_steps,
    register_step,
    unregister_step,
)
from keras_steps._saving import load_model  # noqa: E402
from keras_steps._seeds import MAX_SEED, seed_field  # noqa: E402
from keras_steps._step import Step, StepSource  # noqa: E402
from keras_steps.hookspecs import hookimpl, hookspec  # noqa: E402

__version__ = "0.1.0"

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
