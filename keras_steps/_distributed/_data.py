"""Each rank's share of the data: array shards, and checks on what ranks were given."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from keras.src import tree
from keras.src.trainers.data_adapters import array_data_adapter

from keras_steps._distributed import _group
from keras_steps._errors import DistributedError


def shard(data: Any, drop_remainder: bool) -> Any:
    """This rank's rows of array data: rows ``rank, rank + W, rank + 2W, ...``.

    The same split as ``DistributedSampler``: with ``shuffle=False`` and
    per-rank batch B, step k's global batch is the rows a single process
    with batch ``W * B`` reads at step k. ``drop_remainder`` drops the last
    ``len % W`` rows so that every rank runs the same number of training
    steps (each step all-reduces); evaluation keeps every row.
    """
    world, r = _group.world_size(), _group.rank()

    def cut(array):
        stop = len(array) - len(array) % world if drop_remainder else len(array)
        if hasattr(array, "iloc"):  # pandas
            return array.iloc[r:stop:world]
        return array[r:stop:world]

    return tree.map_structure(cut, data, none_is_leaf=False)


def is_array_data(data: Any) -> bool:
    return array_data_adapter.can_convert_arrays(data)


def check_same_arrays(data: Any, what: str) -> None:
    """Refuse arrays that differ between ranks, before sharding them.

    Every rank takes its rows from its own copy, so the copies must be equal:
    unseeded random data or a per-rank file would silently train on a mix of
    datasets, and unequal lengths would make ranks run different numbers of
    steps. Compares the row counts and up to 64 evenly spaced rows per array.
    """
    rows, total, squares = 0.0, 0.0, 0.0
    for array in tree.flatten(data):
        if array is None:
            continue
        n = len(array)
        picked = array.iloc if hasattr(array, "iloc") else array
        sample = picked[np.linspace(0, n - 1, min(n, 64)).astype(int)] if n else array[:0]
        sample = sample.cpu().numpy() if isinstance(sample, torch.Tensor) else np.asarray(sample)
        rows += n
        if np.issubdtype(sample.dtype, np.number) or sample.dtype == bool:
            sample = sample.astype(np.float64)
            total += float(sample.sum())
            squares += float((sample**2).sum())
    mine = torch.tensor([rows, total, squares], dtype=torch.float64)
    (rank0,) = _group.broadcast(f"comparison of {what} across ranks", [mine])
    differs = torch.tensor([0.0 if torch.equal(mine, rank0) else 1.0], dtype=torch.float64)
    (count,) = _group.all_reduce_sum(f"comparison of {what} across ranks", [differs])
    if count.item() > 0:
        raise DistributedError(
            f"keras_steps, rank {_group.rank()} of {_group.world_size()}: the {what} "
            "differ between ranks "
            f"({int(count.item())} rank(s) differ from rank 0: rows {mine[0]:.0f} here, "
            f"{rank0[0]:.0f} on rank 0). fit() and evaluate() give each rank its share of "
            "the arrays, so every rank must pass the same ones: seed random data or load it "
            "identically, or pass a DataLoader with a DistributedSampler."
        )


def warn_unsharded_loader(x: Any) -> None:
    loader = x if isinstance(x, torch.utils.data.DataLoader) else None
    if loader is None or isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return
    sampler = loader.sampler
    if loader.batch_sampler is not None:
        sampler = getattr(loader.batch_sampler, "sampler", sampler)
    if not isinstance(sampler, torch.utils.data.DistributedSampler):
        warnings.warn(
            f"keras_steps, rank {_group.rank()} of {_group.world_size()}: this DataLoader has no "
            "DistributedSampler, so every rank reads the same samples. Pass "
            "sampler=torch.utils.data.DistributedSampler(dataset) (see the keras-steps docs' "
            "'Distributed training' page).",
            stacklevel=4,
        )


def distributed_sampler(x: Any) -> Any:
    if not isinstance(x, torch.utils.data.DataLoader):
        return None
    for sampler in (x.sampler, getattr(x.batch_sampler, "sampler", None)):
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            return sampler
    return None
