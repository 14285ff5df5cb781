"""``fit()`` and ``evaluate()`` on one rank: its data, its callbacks, rank 0's start."""

from __future__ import annotations

from typing import Any

import keras

import keras_steps.callbacks
from keras_steps import _keras_private
from keras_steps._distributed import _data, _group, _presence, _sync
from keras_steps._errors import DistributedError

# Callbacks that write files, print, or talk to a server: rank 0's alone.
_RANK_ZERO_CALLBACKS = (
    keras.callbacks.BackupAndRestore,
    keras.callbacks.CSVLogger,
    keras.callbacks.ModelCheckpoint,
    keras.callbacks.ProgbarLogger,
    keras.callbacks.RemoteMonitor,
    keras.callbacks.TensorBoard,
    keras_steps.callbacks.TensorBoard,
    *((keras.callbacks.OrbaxCheckpoint,) if hasattr(keras.callbacks, "OrbaxCheckpoint") else ()),
)


def _rank_callbacks(callbacks: Any) -> list:
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    callbacks = list(callbacks or [])
    if _group.rank() != 0:
        callbacks = [
            cb
            for cb in callbacks
            # ForOptimizers(callback) is judged by the callback it runs.
            if not isinstance(
                cb.callback if isinstance(cb, keras_steps.callbacks.ForOptimizers) else cb,
                _RANK_ZERO_CALLBACKS,
            )
        ]
    return callbacks


def fit_arguments(model: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``fit``'s bound arguments for this rank.

    Shards array data (train rows split off for ``validation_split`` first,
    as Keras does, then both parts sharded), silences progress bars and
    drops rank-0-only callbacks on other ranks, and adds the callback that
    broadcasts rank 0's state when training starts.
    """
    refuse_keras_distribution("fit")
    x, y, sample_weight = args.get("x"), args.get("y"), args.get("sample_weight")
    split = args.get("validation_split")
    if split and args.get("validation_data") is None and _data.is_array_data((x, y, sample_weight)):
        (x, y, sample_weight), args["validation_data"] = _keras_private.train_validation_split(
            (x, y, sample_weight), validation_split=split
        )
        args["validation_split"] = 0.0
    if _data.is_array_data((x, y, sample_weight)):
        _data.check_same_arrays((x, y, sample_weight), "training arrays")
        args["x"], args["y"], args["sample_weight"] = _data.shard((x, y, sample_weight), True)
    else:
        _data.warn_unsharded_loader(x)
    val = args.get("validation_data")
    if val is not None and isinstance(val, (tuple, list)):
        val = keras.utils.unpack_x_y_sample_weight(tuple(val))
        if _data.is_array_data(val):
            _data.check_same_arrays(val, "validation arrays")
            args["validation_data"] = _data.shard(val, False)
    _rank_zero_output(args)
    # Keras >= 3.16 moves a DataLoader's sampler on by itself.
    sampler = None if _keras_private.keras_sets_sampler_epoch() else _data.distributed_sampler(x)
    args["callbacks"].append(_DistributedRun(sampler))
    return args


def evaluate_arguments(model: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``evaluate``'s bound arguments for this rank (see fit_arguments)."""
    if _keras_private.evaluate_within_fit(args.get("kwargs", {})):
        return args  # inside fit(): data already sharded, callbacks already set
    refuse_keras_distribution("evaluate")
    data = (args.get("x"), args.get("y"), args.get("sample_weight"))
    if _data.is_array_data(data):
        _data.check_same_arrays(data, "evaluation arrays")
        args["x"], args["y"], args["sample_weight"] = _data.shard(data, False)
    else:
        _data.warn_unsharded_loader(args.get("x"))
    _rank_zero_output(args)
    args["callbacks"].append(_DistributedRun(None))
    return args


def refuse_keras_distribution(method: str) -> None:
    """Refuse a Keras distribution on top of keras-steps's own data parallelism.

    With ``keras.distribution.set_distribution(...)`` Keras (3.16 and later on
    torch) shards NumPy, PyDataset and DataLoader data itself and may wrap or
    shard the model: together with keras-steps's sharding and gradient
    averaging, every example would be split twice.
    """
    active = keras.distribution.distribution()
    if active is None:
        return
    raise DistributedError(
        f"keras_steps, rank {_group.rank()} of {_group.world_size()}: {method}() found a "
        f"Keras distribution ({type(active).__name__}, set with "
        "keras.distribution.set_distribution) under torchrun. StepModel already shards the "
        "data, averages gradients and reduces metrics over ranks itself; with both, data "
        "would be sharded twice. Remove the set_distribution call (see the "
        "'Distributed training' docs page)."
    )


def _rank_zero_output(args: dict[str, Any]) -> None:
    if _group.rank() != 0:
        args["verbose"] = 0
    args["callbacks"] = _rank_callbacks(args.get("callbacks"))


class _DistributedRun(keras.callbacks.Callback):
    """Starts fit() and evaluate() from rank 0's state; moves DistributedSamplers on."""

    def __init__(self, sampler: Any) -> None:
        super().__init__()
        self._sampler = sampler
        self._fitting = False

    # _presence records where this rank is, so that a rank that leaves is
    # named by the others' errors.
    def on_train_begin(self, logs=None):
        self._fitting = True
        _presence.entered("fit")
        _sync.broadcast_from_rank_zero(self.model)

    def on_train_end(self, logs=None):
        self._fitting = False
        _presence.left("fit")

    def on_test_begin(self, logs=None):
        if not self._fitting:
            _presence.entered("evaluate")
            _sync.broadcast_from_rank_zero(self.model)

    def on_test_end(self, logs=None):
        if not self._fitting:
            _presence.left("evaluate")

    def on_epoch_begin(self, epoch, logs=None):
        _presence.at(epoch=epoch)
        if self._sampler is not None:
            self._sampler.set_epoch(epoch)

    def on_train_batch_end(self, batch, logs=None):
        _presence.at(batches=batch + 1)
