"""``fit()`` and ``evaluate()`` on one rank: its data, its callbacks, rank 0's start."""

from __future__ import annotations

from typing import Any

import keras
from keras.src.trainers.data_adapters import array_slicing
from keras.src.trainers.data_adapters.data_adapter_utils import (
    unpack_x_y_sample_weight,
)

import keras_steps.callbacks
from keras_steps._distributed import _data, _group, _sync

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
    x, y, sample_weight = args.get("x"), args.get("y"), args.get("sample_weight")
    split = args.get("validation_split")
    if split and args.get("validation_data") is None and _data.is_array_data((x, y, sample_weight)):
        (x, y, sample_weight), args["validation_data"] = array_slicing.train_validation_split(
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
        val = unpack_x_y_sample_weight(tuple(val))
        if _data.is_array_data(val):
            _data.check_same_arrays(val, "validation arrays")
            args["validation_data"] = _data.shard(val, False)
    _rank_zero_output(args)
    args["callbacks"].append(_DistributedRun(_data.distributed_sampler(x)))
    return args


def evaluate_arguments(model: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``evaluate``'s bound arguments for this rank (see fit_arguments)."""
    if args.get("kwargs", {}).get("_use_cached_eval_dataset"):
        return args  # inside fit(): data already sharded, callbacks already set
    data = (args.get("x"), args.get("y"), args.get("sample_weight"))
    if _data.is_array_data(data):
        _data.check_same_arrays(data, "evaluation arrays")
        args["x"], args["y"], args["sample_weight"] = _data.shard(data, False)
    else:
        _data.warn_unsharded_loader(args.get("x"))
    _rank_zero_output(args)
    args["callbacks"].append(_DistributedRun(None))
    return args


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

    def on_train_begin(self, logs=None):
        self._fitting = True
        _sync.broadcast_from_rank_zero(self.model)

    def on_train_end(self, logs=None):
        self._fitting = False

    def on_test_begin(self, logs=None):
        if not self._fitting:
            _sync.broadcast_from_rank_zero(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if self._sampler is not None:
            self._sampler.set_epoch(epoch)
