"""How a ``StepModel`` is saved, loaded and resumed.

A saved ``StepModel`` config holds, next to what Keras saves for the model:

``step``
    the step name;
``step_options``
    the validated options as plain JSON data (``model_dump(mode="json")``);
``step_options_version``
    the options class's ``options_version`` when the file was written;
``step_source``
    where the step came from (kind, distribution, version, entry point), only
    to name the missing plugin in error messages;
``models``
    for ``StepModel(models={...})``: each role's network, serialized by Keras.

Loading trusts none of it: the step is looked up in the registry by name
(nothing named in the file is imported), the options are data that the step's
pydantic class validates (nothing in them is deserialized or evaluated), and
each network goes through Keras's own ``deserialize_keras_object`` under the
caller's ``safe_mode``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import inspect
import json
import os
import warnings
import zipfile
from typing import Any

import keras

from keras_steps import _atomic, _distributed, _keras_private
from keras_steps._errors import (
    DamagedFileError,
    OptionsError,
    PluginError,
    StepError,
    UnknownStepError,
)
from keras_steps._options import StepOptions
from keras_steps._registry import get_step
from keras_steps._step import Step

__all__ = [
    "check_not_damaged",
    "check_restored",
    "claim_saved_step",
    "deserialize_models",
    "load_model",
    "load_unsaved_state",
    "load_weights",
    "pop_saved_step",
    "rebuilding",
    "register_variant_name",
    "save_model",
    "save_unsaved_state",
    "save_weights",
    "step_config",
    "with_mid_epoch_resume",
]

STEP_KEYS = ("step", "step_options", "step_options_version", "step_source")
STATE_PREFIX = "step_state:"
SEED_PREFIX = "seed_generator:"


# -- writing --------------------------------------------------------------------
def options_version(options_class: type[StepOptions], step: Step) -> int:
    version = getattr(options_class, "options_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise PluginError(
            f"Step {step.name!r} ({step.source}): {options_class.__name__}."
            f"options_version is {version!r}; expected an int >= 0."
        )
    return version


def step_config(step: Step, options: StepOptions) -> dict[str, Any]:
    """Return the step part of a ``StepModel`` config, as plain JSON data."""
    return {
        "step": step.name,
        "step_options": options.model_dump(mode="json"),
        "step_options_version": options_version(step.options_class, step),
        "step_source": dataclasses.asdict(step.source),
    }


def register_variant_name(variant: type) -> None:
    """Make a functional or wrapper variant class save under its user class's name.

    ``StepModel.__new__`` builds instances of cached variant classes; a saved
    file must name the class the user wrote (and registered), so that loading
    finds it and rebuilds the right variant.
    """
    base = getattr(variant, "_step_base", None)
    if base is None:
        return
    names = _keras_private.global_custom_names()
    if base in names:
        names[variant] = names[base]
    else:
        names.pop(variant, None)


# -- files: atomic writes, damaged files, every optimizer restored ----------------
def save_model(keras_save, filepath, overwrite=True, zipped=None, **kwargs) -> None:
    """``keras.Model.save``, written to a temporary file and renamed over ``filepath``.

    A kill at any moment leaves the old file or the new one. Remote paths and
    unzipped directories (``zipped=False``) are written by Keras as they are.
    """
    if not _atomic.can_replace(filepath, (".keras", ".h5", ".hdf5")) or zipped is False:
        # Keras writes it, or raises its own error naming the path it was given.
        keras_save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)
        return
    if not _may_overwrite(filepath, overwrite):
        return
    _atomic.write_with(
        lambda temp: keras_save(temp, overwrite=True, zipped=zipped, **kwargs), filepath
    )


def save_weights(keras_save_weights, filepath, overwrite=True, max_shard_size=None) -> None:
    """``keras.Model.save_weights``, written atomically as :func:`save_model`.

    Sharded weights (``max_shard_size``) are several files that one rename
    cannot replace together; Keras writes them as it does.
    """
    if not _atomic.can_replace(filepath, (".weights.h5",)) or max_shard_size is not None:
        keras_save_weights(filepath, overwrite=overwrite, max_shard_size=max_shard_size)
        return
    if not _may_overwrite(filepath, overwrite):
        return
    _atomic.write_with(lambda temp: keras_save_weights(temp, overwrite=True), filepath)


def _may_overwrite(filepath, overwrite: bool) -> bool:
    if overwrite or not os.path.exists(filepath):
        return True
    return _keras_private.ask_to_proceed_with_overwrite(os.fspath(filepath))


def check_not_damaged(filepath) -> None:
    """Raise :class:`DamagedFileError` if a local model or weights file is unreadable.

    Keras reports a truncated ``.keras`` file as "File not found" and a
    truncated ``.weights.h5`` as an h5py ``OSError``. A missing file is left
    to Keras's own message.
    """
    if not _atomic.is_local(filepath) or not os.path.isfile(filepath):
        return
    path = os.fspath(filepath)
    size = os.path.getsize(path)
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise _damaged(path, size, f"it is not a complete zip archive ({exc})") from None
        missing = sorted({"config.json", "metadata.json"} - names)
        if missing:
            raise _damaged(path, size, f"the archive has no {', '.join(missing)}")
    elif path.endswith((".h5", ".hdf5")):
        import h5py  # a Keras dependency, imported only where h5 files are read

        try:
            with h5py.File(path, "r"):
                pass
        except OSError as exc:
            raise _damaged(path, size, f"it is not a complete HDF5 file ({exc})") from None


def _damaged(path: str, size: int, why: str) -> DamagedFileError:
    return DamagedFileError(
        f"The file {path!r} ({size} bytes) is damaged: {why}. keras_steps writes "
        "its files atomically, so it was cut short or changed by something else "
        "(an interrupted copy, a full disk, a save made with keras.saving.save_model "
        "instead of model.save). Load an earlier copy."
    )


def load_model(
    filepath: str | os.PathLike,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> Any:
    """``keras.models.load_model``, but a damaged file is a clear error.

    Args:
        filepath: the ``.keras`` (or legacy ``.h5``) file.
        custom_objects: as for ``keras.models.load_model``.
        compile: as for ``keras.models.load_model``.
        safe_mode: as for ``keras.models.load_model``.

    Returns:
        The loaded model.

    Raises:
        DamagedFileError: the file exists but is truncated or not a Keras
            file; Keras itself would say "File not found".
        StepError: the saved step or its options cannot be used (see the
            "Saving and resuming" page of the documentation).
    """
    check_not_damaged(filepath)
    return keras.models.load_model(
        filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
    )


def load_weights(model: Any, keras_load_weights, filepath, skip_mismatch=False, **kwargs):
    """``keras.Model.load_weights`` that restores every optimizer, or raises.

    Keras loads optimizer state only into optimizers that are already built,
    and skips the others with a warning; a single optimizer is built by the
    first training step, so its ``iterations`` and moments would be lost.
    Every optimizer of a compiled model is built first, and one whose saved
    state does not fit (Keras's warning, then nothing loaded) is an error.
    """
    check_not_damaged(filepath)
    if model.built:
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        model._build_role_optimizers()
    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        if not skip_mismatch:
            for optimizer in _all_optimizers(model):
                stack.enter_context(_noting_skipped_state(optimizer, skipped))
        keras_load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
    if skipped:
        raise StepError(
            f"Cannot load the weights of {model.name!r} (step {model.step!r}) from "
            f"{os.fspath(filepath)!r}: the optimizer state in the file does not fit "
            f"the model's optimizers ({'; '.join(skipped)}), so training would not "
            "continue where it stopped. Compile the model as it was compiled when "
            "saved (same optimizer classes and roles), or pass skip_mismatch=True "
            "to load the rest without it."
        )


def _all_optimizers(model: Any) -> list:
    found = {id(o): o for o in model.optimizers.values()}
    if getattr(model, "optimizer", None) is not None:
        found.setdefault(id(model.optimizer), model.optimizer)
    return list(found.values())


@contextlib.contextmanager
def _noting_skipped_state(optimizer: Any, skipped: list[str]):
    """While loading, note when ``optimizer``'s saved state cannot be loaded into it.

    The same test as Keras's ``load_own_variables``, which then only warns.
    """
    original = optimizer.load_own_variables

    def load_own_variables(store):
        if len(store.keys()) != len(optimizer.variables):
            skipped.append(
                f"optimizer {optimizer.name!r} has {len(optimizer.variables)} "
                f"variables, the file {len(store.keys())}"
            )
        return original(store)

    optimizer.load_own_variables = load_own_variables
    try:
        yield
    finally:
        del optimizer.load_own_variables  # the class's method again


# -- reading --------------------------------------------------------------------
def _saved_source(config: dict[str, Any]) -> str:
    source = config.get("step_source")
    if not isinstance(source, dict):
        return ""
    text = {k: v for k, v in source.items() if isinstance(v, str)}
    if text.get("kind") == "plugin" and text.get("distribution"):
        where = f"distribution {text['distribution']!r}"
        if text.get("version"):
            where += f" version {text['version']}"
        if text.get("entry_point"):
            where += f", entry point {text['entry_point']!r}"
        return f" (saved from {where})"
    if text.get("kind"):
        return f" (saved from {text['kind']!r} code)"
    return ""


def pop_saved_step(
    config: dict[str, Any], required: bool = True
) -> tuple[Step, StepOptions] | None:
    """Remove the step keys from ``config``; return the step and validated options.

    Returns None only when ``required`` is false and ``config`` has none of
    the step keys: a subclass whose own ``get_config`` does not call
    ``super().get_config()`` is rebuilt by its constructor, step included.
    Otherwise nothing is filled in: ``step``, ``step_options`` and
    ``step_options_version`` must each be there, of the right type.

    Raises:
        StepError: ``step`` is missing or not a str.
        UnknownStepError, StepConflictError, PluginError: the saved step is not
            usable here; the message names the step and the plugin
            distribution it was saved from.
        OptionsError: ``step_options`` or ``step_options_version`` is missing,
            null or of the wrong type, or the saved options no longer
            validate and no ``step_migrate_options`` hook turns them into
            options that do.
    """
    if not required and not any(key in config for key in STEP_KEYS):
        return None
    present = {key for key in STEP_KEYS if key in config}
    saved = {key: config.pop(key, None) for key in STEP_KEYS}
    name = saved["step"]
    where = _saved_source(saved)
    if "step" not in present:
        raise StepError(
            "Cannot load the saved StepModel: its config has no 'step' field (the "
            f"step's name){where}; the file was not written by StepModel.save or "
            "was edited. Nothing is assumed in its place."
        )
    if not isinstance(name, str):
        raise StepError(
            f"Cannot load the saved StepModel: its 'step' field is "
            f"{type(name).__name__} {name!r}, not a str{where}."
        )
    try:
        step = get_step(name)
    except StepError as exc:
        source = saved["step_source"]
        hint = ""
        if isinstance(exc, UnknownStepError) and isinstance(source, dict):
            distribution = source.get("distribution")
            if source.get("kind") == "plugin" and isinstance(distribution, str):
                hint = (
                    f" Installing the distribution {distribution!r} should provide it."
                )
        raise type(exc)(
            f"Cannot load the saved StepModel: it was trained with step {name!r}"
            f"{where}, which cannot be used here.{hint} {exc}"
        ) from None
    heading = f"Cannot load the saved StepModel with step {name!r}{where}:"
    options, version = saved["step_options"], saved["step_options_version"]
    for field, value, expected in (
        ("step_options", options, "a dict of the step's options"),
        ("step_options_version", version, "an int >= 0"),
    ):
        if field not in present:
            raise OptionsError(
                f"{heading} its config has no {field!r} field; expected {expected}. "
                "Nothing is assumed in its place."
            )
        if value is None:
            raise OptionsError(
                f"{heading} its {field!r} field is null; expected {expected}. "
                "Nothing is assumed in its place."
            )
    if not isinstance(options, dict):
        raise OptionsError(
            f"{heading} its 'step_options' field is {type(options).__name__} "
            f"{options!r}; expected a dict of the step's options."
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise OptionsError(
            f"{heading} its 'step_options_version' field is {version!r}; expected "
            "an int >= 0."
        )
    options = _migrate(step, copy.deepcopy(options), version, heading)
    try:
        return step, step.validate_options(options, saved=True)
    except OptionsError as exc:
        current = options_version(step.options_class, step)
        raise OptionsError(
            f"{heading} the saved options (version {version}) do not validate "
            f"against the installed step ({step.source}, options version "
            f"{current}). If the plugin renamed or changed an option, it must "
            "bump StepOptions.options_version and implement "
            "step_migrate_options.\n" + str(exc)
        ) from None


def _migrate(step: Step, options: dict, version: int, heading: str) -> dict:
    current = options_version(step.options_class, step)
    if version == current:
        return options
    if version > current:
        raise OptionsError(
            f"{heading} its options have version {version}, newer than the "
            f"installed step's version {current} ({step.source}). Upgrade the "
            "plugin."
        )
    migrate = step.hooks.get("step_migrate_options")
    if migrate is None:
        raise OptionsError(
            f"{heading} its options have version {version}, but the installed "
            f"step ({step.source}) is at options version {current} and "
            "implements no step_migrate_options hook to convert them."
        )
    migrated = migrate(options, version)
    if not isinstance(migrated, dict):
        raise PluginError(
            f"Step {step.name!r} ({step.source}): hook step_migrate_options "
            f"returned {type(migrated).__name__}; expected a dict of options."
        )
    return migrated


def deserialize_models(step: Step, models: Any, custom_objects=None) -> dict:
    """Rebuild each role's network from its Keras config."""
    if not isinstance(models, dict):
        raise StepError(
            f"Cannot load the saved StepModel with step {step.name!r}: its "
            f"models are {type(models).__name__}, not a dict from role to network."
        )
    return {
        role: keras.saving.deserialize_keras_object(
            config, custom_objects=custom_objects
        )
        for role, config in models.items()
    }


# -- rebuilding: the saved step wins over what a constructor asks for ------------
@dataclasses.dataclass
class _Pending:
    cls: type
    step: Step
    options: StepOptions
    claimed: bool = False


_PENDING: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "keras_steps_pending_restore", default=None
)


@contextlib.contextmanager
def rebuilding(cls: type, step: Step, options: StepOptions):
    """While ``cls`` is rebuilt from a config, hand it the saved step and options.

    A user subclass passes its own ``step=``/``step_options=`` to
    ``StepModel.__init__`` (and may not accept them as arguments at all), so
    they cannot travel as constructor arguments; the first ``StepModel`` of
    class ``cls`` initialised in this context takes them instead. Nested
    StepModels are rebuilt by their own ``from_config`` in their own context.
    """
    pending = _Pending(cls, step, options)
    token = _PENDING.set(pending)
    try:
        yield pending
    finally:
        _PENDING.reset(token)


def claim_saved_step(model: Any) -> tuple[Step, StepOptions] | None:
    """The saved step and options if ``model`` is the one being rebuilt, else None."""
    pending = _PENDING.get()
    if pending is None or pending.claimed or not isinstance(model, pending.cls):
        return None
    pending.claimed = True
    return pending.step, pending.options


def check_restored(pending: _Pending, cls: type) -> None:
    if not pending.claimed:
        raise StepError(
            f"{cls.__name__}.from_config rebuilt a model without calling "
            f"StepModel.__init__, so the saved step {pending.step.name!r} was "
            "not attached."
        )


# -- state Keras does not save: metric trackers, random seeds --------------------
def _unsaved_state(model: Any) -> dict[str, Any]:
    """Key -> variable for the state Keras's saving leaves out.

    Keras saves neither metric variables nor ``SeedGenerator`` state, so a
    loaded or resumed step would lose its running averages and draw other
    latent vectors, label noise or dropout masks than a run that never
    stopped. The step's own trackers and generators are keyed by their
    ``step_state`` name; generators inside the networks (``Dropout``) by
    their order.
    """
    found: dict[str, Any] = {}
    owned: set[int] = set()
    for name, item in sorted(model.step_state.items()):
        if isinstance(item, keras.metrics.Metric):
            for i, variable in enumerate(item.variables):
                found[f"{STATE_PREFIX}{name}:{i}"] = variable
        elif isinstance(item, keras.random.SeedGenerator):
            found[f"{STATE_PREFIX}{name}"] = item.state
            owned.add(id(item))
    i = 0
    for layer in _keras_private.layers_of(model):
        for generator in _keras_private.seed_generators_of(layer):
            if id(generator) not in owned:
                owned.add(id(generator))
                found[f"{SEED_PREFIX}{i}"] = generator.state
                i += 1
    return found


def save_unsaved_state(model: Any, store: Any) -> None:
    """Write the step's trackers and every seed state next to the model's variables."""
    for key, variable in _unsaved_state(model).items():
        store[key] = variable


def load_unsaved_state(model: Any, store: Any) -> dict:
    """Restore what :func:`save_unsaved_state` wrote; return the other entries."""
    ours = (STATE_PREFIX, SEED_PREFIX)
    keys = list(store.keys())
    saved = {k for k in keys if k.startswith(ours)}
    expected = _unsaved_state(model)
    if saved != set(expected):
        missing = sorted(set(expected) - saved)
        unexpected = sorted(saved - set(expected))
        raise StepError(
            f"Cannot load the state of {model.name!r} (step {model.step!r}): the "
            "step's trackers or random seeds differ from the file's; the step "
            "or the networks changed since saving."
            + (f" Missing from the file: {missing}." if missing else "")
            + (f" Not in the model: {unexpected}." if unexpected else "")
        )
    for key, variable in expected.items():
        variable.assign(store[key])
    return {k: store[k] for k in keys if not k.startswith(ours)}


# -- resuming in the middle of an epoch ------------------------------------------
class _ResumeMidEpoch(keras.callbacks.Callback):
    """Finish an epoch that ``BackupAndRestore`` restored half-way, exactly.

    ``BackupAndRestore(save_freq=N)`` restores the weights saved after batch
    ``b`` of epoch ``e``, then Keras 3 replays epoch ``e`` from its first
    batch, training batches ``0..b`` twice. Placed after the backup
    callbacks, this one passes over those batches without training and puts
    back the restored tracker state that ``fit`` resets at the start of the
    epoch, so the resumed run matches a run that never stopped (given the
    same data order).
    """

    def __init__(self, backups: list) -> None:
        super().__init__()
        self._backups = backups
        self._skip = 0
        self._train_function = None
        self._tracker_values: list | None = None

    def on_train_begin(self, logs=None):
        position = None
        for backup in self._backups:
            restored = _restored_position(backup)
            if restored is not None:
                position = restored
                # BackupAndRestore forgets where it resumed: its next backups
                # would say epoch 0, and one taken while batches are passed
                # over would hold later weights than its batch number says.
                _keras_private.backup_resumed_at(backup, *restored)
        # Under torchrun only rank 0 restores (the backup may be on its disk
        # alone), and every rank must pass over the same batches.
        position = _distributed.rank_zero_value(position, "the mid-epoch resume position")
        if position is None:
            return
        self._skip = position[1]
        self._tracker_values = [v.numpy() for v in _tracker_variables(self.model)]
        self._train_function = self.model.train_function
        self.model.train_function = self._pass_over

    def on_epoch_begin(self, epoch, logs=None):
        for backup in self._backups:
            _keras_private.backup_reset_last_batch_seen(backup)
        if self._tracker_values is not None:
            variables = _tracker_variables(self.model)
            for variable, value in zip(variables, self._tracker_values, strict=True):
                variable.assign(value)
            self._tracker_values = None

    def _pass_over(self, batches):
        # A group of steps_per_execution batches; the backup may have been
        # taken with another N, so the group can straddle the resume point.
        passed = min(self._skip, len(batches))
        self._skip -= passed
        if self._skip <= 0:
            self._put_back()
        if passed < len(batches):
            return self.model.train_function(batches[passed:])
        return self.model.get_metrics_result()

    def _put_back(self):
        if self._train_function is not None:
            self.model.train_function = self._train_function
            self._train_function = None

    def on_train_end(self, logs=None):
        self._put_back()


def _tracker_variables(model: Any) -> list:
    # Only the step's trackers: Keras saves no compiled metric, so those start
    # the resumed epoch empty, as fit() would make them anyway.
    return [
        v
        for _, item in sorted(model.step_state.items())
        if isinstance(item, keras.metrics.Metric)
        for v in item.variables
    ]


def _restored_position(backup: Any) -> tuple[int, int] | None:
    """(epoch, batches of it already trained) of a mid-epoch backup, else None."""
    if backup.save_freq == "epoch":
        return None  # backups at epoch ends: Keras resumes them exactly
    path = _keras_private.backup_metadata_path(backup)
    if path is None:
        raise StepError(
            "keras.callbacks.BackupAndRestore of this Keras version has no "
            "_training_metadata_path; keras_steps cannot resume it in mid-epoch. "
            "Use save_freq='epoch'."
        )
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metadata = json.load(f)
    epoch, batch = metadata.get("epoch"), metadata.get("batch")
    if not (isinstance(epoch, int) and isinstance(batch, int) and batch >= 0):
        return None
    # "batch" is the zero-based index of the last batch the backup includes.
    return epoch, batch + 1


def with_mid_epoch_resume(fit, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Return ``fit``'s arguments with :class:`_ResumeMidEpoch` after any backups."""
    bound = inspect.signature(fit).bind(*args, **kwargs)
    callbacks = bound.arguments.get("callbacks")
    if isinstance(callbacks, (list, tuple)):
        backups = [
            c for c in callbacks if isinstance(c, keras.callbacks.BackupAndRestore)
        ]
        if any(type(c) is keras.callbacks.BackupAndRestore for c in backups):
            warnings.warn(
                "keras.callbacks.BackupAndRestore can leave a backup that cannot be "
                "resumed, or that resumes at the wrong epoch, if the process is killed "
                "while it writes. keras_steps.callbacks.BackupAndRestore takes the "
                "same arguments and survives a kill at any moment (see the 'Saving and "
                "resuming' page of the documentation).",
                UserWarning,
                stacklevel=3,
            )
        if backups:
            bound.arguments["callbacks"] = [*callbacks, _ResumeMidEpoch(backups)]
    return bound.args, bound.kwargs
