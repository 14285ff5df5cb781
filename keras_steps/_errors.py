"""The exceptions keras_steps raises.

Every error is a :class:`StepError`, itself a ``ValueError``, so code that
already catches Keras's ``ValueError`` for bad arguments keeps working.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "BackendError",
    "DamagedFileError",
    "DistributedError",
    "OptionsError",
    "PluginError",
    "RoleError",
    "StepConflictError",
    "StepError",
    "UnknownStepError",
]


class StepError(ValueError):
    """Base class of every error raised by keras_steps."""


class BackendError(StepError):
    """Keras runs on a backend other than PyTorch."""


class DamagedFileError(StepError, OSError):
    """A model or weights file is truncated or is not the file it claims to be.

    Also an ``OSError``, the error h5py raises for such a file, so code that
    falls back on it (Keras's ``BackupAndRestore(double_checkpoint=True)``)
    still does.
    """


class UnknownStepError(StepError, LookupError):
    """No installed or registered step has the requested name."""


class StepConflictError(StepError):
    """Two sources provide the same step name, or a name is taken."""


class OptionsError(StepError):
    """A step's options failed validation."""


class RoleError(StepError):
    """A model or optimizer role is missing, unknown, or given twice."""


class ArgumentError(StepError):
    """A data or compile argument the step refuses, or one it needs is missing."""


class PluginError(StepError):
    """A plugin does not implement the step hooks correctly."""


class DistributedError(StepError, RuntimeError):
    """Data-parallel training failed: a collective timed out or lost a rank, or
    torchrun's environment does not fit this machine."""
