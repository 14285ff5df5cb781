"""Every use of Keras's private API, in one place, gated by Keras version.

keras-steps supports the Keras versions that ``pyproject.toml`` admits (and
CI tests: the lowest, the current release and ``keras-nightly``). Keras does
not keep ``keras.src`` or underscored attributes stable, so nothing else in
keras-steps touches them (a test of the project fails on a
``keras.src`` import anywhere else). Each use below says in one line why no
public API does the job; where Keras versions differ, the gate is
``KERAS_VERSION``. When a Keras release breaks one of these, this module is
the only one to change.

Sections, one per concern (other features add theirs under their own
heading): model construction, the torch trainer, metrics, data adapters,
saving, BackupAndRestore. Where public API covers a need it is used
instead, outside this module: ``keras.tree`` (not ``keras.src.tree``),
``keras.utils.unpack_x_y_sample_weight``, the model's ``jit_compile`` (not
the trainer's ``_should_torch_compile``/``_use_torch_compile``), and
``get_compile_config`` (not writing ``_compile_config``).
"""

from __future__ import annotations

import re
from typing import Any

import keras
from keras.src.models.functional import Functional
from keras.src.models.model import Trainer as _BackendTrainer
from keras.src.models.model import functional_init_arguments as _functional_init_arguments
from keras.src.saving import object_registration as _object_registration
from keras.src.trainers import trainer as _base_trainer_module
from keras.src.trainers.data_adapters import array_data_adapter as _array_data_adapter
from keras.src.trainers.data_adapters import array_slicing as _array_slicing
from keras.src.utils import python_utils as _python_utils

__all__ = [
    "BACKUP_PRIVATE",
    "KERAS_VERSION",
    "BackendTrainer",
    "Functional",
    "TrainerHooks",
    "ask_to_proceed_with_overwrite",
    "backup_metadata_path",
    "backup_position",
    "backup_reset_last_batch_seen",
    "backup_resumed_at",
    "can_convert_arrays",
    "check_backup_private",
    "default_config",
    "evaluate_within_fit",
    "functional_init_arguments",
    "global_custom_names",
    "initial_epoch",
    "keras_sets_sampler_epoch",
    "layers_of",
    "loss_tracker",
    "metric_direction",
    "optimizer_trainable_variables",
    "seed_generators_of",
    "set_initial_epoch",
    "train_validation_split",
    "trainer_wraps_ddp",
]


def _parse_version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:  # pragma: no cover - Keras always has a X.Y version
        raise RuntimeError(f"keras_steps cannot read the Keras version {text!r}.")
    return int(match.group(1)), int(match.group(2))


# (major, minor); keras-nightly "3.16.0.devYYYYMMDDHH" reads as (3, 16).
KERAS_VERSION: tuple[int, int] = _parse_version(keras.__version__)

# Keras 3.16 (keras-nightly) reworked the torch trainer: DDP wrapping,
# metric all-reduce, steps_per_execution and compiling (docs/distributed.md).
_TORCH_TRAINER_3_16 = KERAS_VERSION >= (3, 16)


# -- model construction (keras_steps/_model.py) ----------------------------------
# StepModel builds its functional and wrapper variants itself (see
# StepModel.__new__): keras.Model would rewrite the class hierarchy, and no
# public API builds a Functional subclass from a keras.Model subclass.
BackendTrainer = _BackendTrainer  # the torch backend's Trainer, initialised first
# Whether (args, kwargs) are keras.Model's functional form (inputs, outputs).
functional_init_arguments = _functional_init_arguments
# Marks get_config as Keras's automatic config, so subclasses keep theirs.
default_config = _python_utils.default


def loss_tracker(model: Any) -> Any:
    """The ``Mean`` metric that Keras's train step updates with the compiled loss.

    Reason: Keras creates it in ``compile()`` as ``model._loss_tracker`` and
    exposes it only inside ``model.metrics``, unnamed among the others.
    Returns None before ``compile()`` (and when Keras made none).
    """
    return getattr(model, "_loss_tracker", None)


# -- the torch trainer (Keras 3.16 wraps, reduces and compiles itself) -----------
def trainer_wraps_ddp() -> bool:
    """Whether this Keras's torch trainer wraps a model in DDP (``ddp_model``)."""
    return _TORCH_TRAINER_3_16


class TrainerHooks:
    """Mixed into ``StepModel`` before ``keras.Model``: Keras trainer hooks it overrides.

    The hooks are private methods of Keras's torch ``Trainer``; keras-steps
    decides per Keras version whether Keras's mechanism or its own runs
    (the table on the "Distributed training" docs page), never both.
    """

    def _initialize_ddp(self):
        # Keras >= 3.16 wraps the model in DistributedDataParallel whenever a
        # process group exists. keras-steps averages gradients in
        # optimizer.apply (steps call their networks directly, so a wrapper
        # would miss their forward passes): switched off, so gradients are
        # never synchronised twice. Keras < 3.16 has no such hook.
        return None

    def get_metrics_result(self):
        if _TORCH_TRAINER_3_16:
            # Keras >= 3.16 all-reduces every metric variable here, on every
            # step and by sum whatever the variable's aggregation. keras-steps
            # reduces once per epoch (_distributed.global_logs), by each
            # variable's aggregation: Keras's reduction is switched off by
            # calling the backend-independent implementation.
            return _base_trainer_class.get_metrics_result(self)
        return super().get_metrics_result()

    def _get_metrics_result_or_logs(self, logs):
        # Keras's fit/evaluate loop reads the epoch's logs through this hook
        # (no public one): keras-steps computes them over all ranks there.
        return self._epoch_logs(logs, super()._get_metrics_result_or_logs)


# Keras 3.16 renamed the backend-independent Trainer (under the torch one) to
# BaseTrainer; only that version's get_metrics_result needs it.
_base_trainer_class = _base_trainer_module.BaseTrainer if _TORCH_TRAINER_3_16 else None


def evaluate_within_fit(evaluate_kwargs: dict) -> bool:
    """Whether an ``evaluate()`` call is fit()'s validation pass.

    Reason: fit() calls evaluate() with the private ``_use_cached_eval_dataset``
    keyword for validation; nothing public tells the two calls apart.
    """
    return bool(evaluate_kwargs.get("_use_cached_eval_dataset"))


def initial_epoch(model: Any) -> Any:
    """The epoch fit() starts from, as BackupAndRestore set it (``model._initial_epoch``).

    Reason: BackupAndRestore hands the restored epoch to fit() through this
    private attribute; no public API reads or sets it.
    """
    return getattr(model, "_initial_epoch", None)


def set_initial_epoch(model: Any, epoch: Any) -> None:
    """Set the epoch fit() starts from (see :func:`initial_epoch`)."""
    model._initial_epoch = epoch


# -- distributed training (keras_steps/_distributed/_sync.py) -------------------
def optimizer_trainable_variables(optimizer: Any) -> list:
    """The variables ``optimizer.apply(grads)`` updates when given none.

    Reason: ``apply(grads)`` without ``trainable_variables`` uses the list the
    optimizer was built with, kept only as ``optimizer._trainable_variables``.
    """
    return list(optimizer._trainable_variables)


# -- data adapters (keras_steps/_distributed/_data.py, _run.py) ------------------
def keras_sets_sampler_epoch() -> bool:
    """Whether Keras's DataLoader adapter calls ``sampler.set_epoch`` each epoch.

    Keras >= 3.16 does (with its own count, from 1 for fit's first epoch);
    before, keras-steps moves a DistributedSampler on itself. One of the two,
    never both: two calls per epoch, and the later one wins.
    """
    return _TORCH_TRAINER_3_16



# Whether data is arrays that Keras's ArrayDataAdapter slices (NumPy, torch,
# pandas, ...): the data keras-steps shards itself. No public predicate.
can_convert_arrays = _array_data_adapter.can_convert_arrays
# fit(validation_split=...) on arrays, split exactly as Keras does, so that
# the training part can be sharded after the split. No public function.
train_validation_split = _array_slicing.train_validation_split


# -- saving (keras_steps/_saving.py) ---------------------------------------------
def global_custom_names() -> dict:
    """Keras's registry from class to registered name (written to saved files).

    Reason: ``keras.saving.get_registered_name`` reads it, but nothing public
    registers a second class (a StepModel variant) under its base's name.
    """
    return _object_registration.GLOBAL_CUSTOM_NAMES


def layers_of(layer: Any, recursive: bool = True) -> list:
    """``layer`` and every layer inside it, each once (``Layer._flatten_layers``).

    Reason: no public API lists nested layers of a subclassed model or layer
    (``Model.layers`` holds only direct children).
    """
    return list(layer._flatten_layers(include_self=True, recursive=recursive))


def seed_generators_of(layer: Any) -> list:
    """The ``SeedGenerator``s a layer owns itself (``Layer._seed_generators``).

    Reason: Keras saves no seed state and lists a layer's generators only here.
    """
    return list(layer._seed_generators)


# -- BackupAndRestore (keras_steps/_saving.py, mid-epoch resume) -----------------
# Keras 3.10 to 3.16 keep the same private fields; keras_steps/_saving.py
# refuses a mid-epoch resume where _training_metadata_path is missing.
def backup_resumed_at(backup: Any, epoch: int, batches: int) -> None:
    """Tell a ``BackupAndRestore`` that training resumes at ``batches`` into ``epoch``.

    Reason: BackupAndRestore forgets where it resumed (its next backups would
    say epoch 0) and has no public way to be told.
    """
    backup._current_epoch = epoch
    backup._batches_seen_since_last_saving = -batches


def backup_reset_last_batch_seen(backup: Any) -> None:
    """Undo BackupAndRestore's off-by-one "last batch seen" at an epoch's start.

    Reason: Keras 3.10 to 3.16 reset ``_last_batch_seen`` to 0 at an epoch's
    end, one more than the "no batch yet" it means: with
    ``steps_per_execution=N`` the first group of every later epoch then
    counts N-1 batches, and ``save_freq=N`` skips its backup.
    """
    if getattr(backup, "_last_batch_seen", None) == 0:
        backup._last_batch_seen = -1


def backup_metadata_path(backup: Any) -> str | None:
    """Where a ``BackupAndRestore`` writes its (epoch, batch) metadata, or None.

    Reason: the path is a private field; its file says where a mid-epoch
    backup was taken.
    """
    return getattr(backup, "_training_metadata_path", None)


# -- saving: atomic writes and keras_steps.callbacks.BackupAndRestore ------------


def ask_to_proceed_with_overwrite(filepath: str) -> bool:
    """Keras's interactive prompt of ``save(..., overwrite=False)``.

    ``StepModel.save`` writes to a temporary file, so it asks the question
    itself before Keras would (on the temporary name, which never exists).
    """
    from keras.src.utils import io_utils

    return io_utils.ask_to_proceed_with_overwrite(filepath)


#: What keras_steps.callbacks.BackupAndRestore overrides or reads in Keras's
#: callback: how it writes and reads one backup, and its position counters.
BACKUP_PRIVATE = (
    "_save_model",
    "_load_model",
    "_current_epoch",
    "_last_batch_seen",
    "_training_metadata_path",
)


def check_backup_private() -> str | None:
    """None if Keras's BackupAndRestore has what keras_steps overrides, else what is missing."""
    callback = keras.callbacks.BackupAndRestore("unused")
    missing = [name for name in BACKUP_PRIVATE if not hasattr(callback, name)]
    return ", ".join(missing) or None


def backup_position(callback: Any) -> tuple[int, int]:
    """(epoch, last batch seen) that Keras's BackupAndRestore writes to its metadata."""
    return callback._current_epoch, callback._last_batch_seen


# -- learning-rate and monitor callbacks ---------------------------------------


def metric_direction(metric: Any) -> str | None:
    """``"up"``, ``"down"`` or None: the direction a Keras metric declares.

    Keras metrics such as ``Accuracy`` or ``MeanSquaredError`` say which way
    is better in the private ``_direction`` attribute, which is what
    ``EarlyStopping``/``ModelCheckpoint``/``ReduceLROnPlateau`` read for
    ``mode="auto"``; there is no public accessor.
    """
    direction = getattr(metric, "_direction", None)
    return direction if direction in ("up", "down") else None
