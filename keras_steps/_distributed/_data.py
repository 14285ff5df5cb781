"""Each rank's share of the data: array shards, and checks on what ranks were given."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import torch
from keras import tree

from keras_steps import _keras_private
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
        if array is None:  # keras.tree passes None leaves (no none_is_leaf in 3.10)
            return None
        stop = len(array) - len(array) % world if drop_remainder else len(array)
        if hasattr(array, "iloc"):  # pandas
            return array.iloc[r:stop:world]
        return array[r:stop:world]

    return tree.map_structure(cut, data)


def is_array_data(data: Any) -> bool:
    return _keras_private.can_convert_arrays(data)


#: Rows per array whose bytes are checksummed when ranks' arrays are compared.
SAMPLED_ROWS = 64
_ARGUMENTS = ("x", "y", "sample_weight")
# Ranks named one by one in a message; more are counted.
_NAMED_RANKS = 4


def _digest(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little", signed=True)  # fits int64


def _label(path: tuple, names: tuple[str, ...]) -> str:
    head, *rest = path
    label = names[head] if isinstance(head, int) and head < len(names) else f"[{head!r}]"
    return label + "".join(f"[{part!r}]" for part in rest)


def _checksums(array: Any) -> tuple[int, int, int]:
    """(rows, layout checksum, values checksum) of up to SAMPLED_ROWS spaced rows."""
    if array is None:
        return -1, 0, 0
    n = len(array)
    rows = np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).astype(int) if n else slice(0, 0)
    sample = (array.iloc if hasattr(array, "iloc") else array)[rows]
    if isinstance(sample, torch.Tensor):
        sample = sample.detach().cpu().contiguous()
        layout = f"{sample.dtype} {tuple(sample.shape[1:])}"
        # A byte view: bfloat16 and friends have no NumPy dtype.
        values = sample.reshape(-1).view(torch.uint8).numpy().tobytes()
    else:
        sample = np.asarray(sample)
        layout = f"{sample.dtype} {sample.shape[1:]}"
        if sample.dtype == object:
            values = "\0".join(map(repr, sample.reshape(-1).tolist())).encode()
        else:
            values = np.ascontiguousarray(sample).tobytes()
    return n, _digest(layout.encode()), _digest(values)


def array_table(data: Any, names: tuple[str, ...] = _ARGUMENTS) -> tuple[list[str], np.ndarray]:
    """Each array's name (``x``, ``y['a']``...) and ``[rows, layout, values]`` checksums.

    ``rows`` is -1 for an argument given as None.
    """
    labels, table = [], []
    for path, array in tree.flatten_with_path(data):
        labels.append(_label(path, names))
        table.append(_checksums(array))
    return labels, np.asarray(table, dtype=np.int64).reshape(len(table), 3)


def _rank_name(r: int, here: int) -> str:
    return f"rank {r} (this one)" if r == here else f"rank {r}"


def _rows(n: int) -> str:
    return "None" if n < 0 else f"{n} rows"


def describe_differences(labels: list[str], tables: np.ndarray, here: int) -> list[str]:
    """One sentence per rank whose arrays differ from rank 0's, naming each array.

    Args:
        labels: the arrays' names, the same on every rank.
        tables: ``[world, arrays, 3]`` rows and checksums of every rank.
        here: this process's rank.
    """
    sentences = []
    for r in range(1, len(tables)):
        parts = []
        for label, mine, first in zip(labels, tables[r], tables[0], strict=True):
            if mine[0] != first[0]:
                parts.append(f"{label} has {_rows(mine[0])}, {_rows(first[0])} on rank 0")
            elif mine[1] != first[1]:
                parts.append(f"{label} has the same {mine[0]} rows but another dtype or row shape")
            elif mine[2] != first[2]:
                rows = (
                    f"all {mine[0]} rows"
                    if mine[0] <= SAMPLED_ROWS
                    else f"{SAMPLED_ROWS} evenly spaced rows"
                )
                parts.append(
                    f"{label} has the same {mine[0]} rows, dtype and row shape, but other "
                    f"values (the checksums of {rows} differ)"
                )
        if parts:
            sentences.append(f"{_rank_name(r, here)}: " + "; ".join(parts))
    return sentences


def _named(sentences: list[str]) -> str:
    more = len(sentences) - _NAMED_RANKS
    shown = ". ".join(s[0].upper() + s[1:] for s in sentences[:_NAMED_RANKS])
    return shown + (f". And {more} more rank(s)" if more > 0 else "")


def check_same_arrays(data: Any, what: str) -> None:
    """Refuse arrays that differ between ranks, before sharding them.

    Every rank takes its rows from its own copy, so the copies must be equal:
    unseeded random data or a per-rank file would silently train on a mix of
    datasets, and unequal lengths would make ranks run different numbers of
    steps. Compares, per array, the arguments given, the row count, the dtype
    and row shape, and a checksum of up to 64 evenly spaced rows; every rank
    learns every rank's figures, so each names the ranks and arrays that
    differ from rank 0.

    Raises:
        DistributedError: on every rank, when any rank's arrays differ.
    """
    here, world = _group.rank(), _group.world_size()
    labels, table = array_table(data)
    step = f"comparison of {what} across ranks"
    headers = torch.zeros((world, 2), dtype=torch.int64)
    headers[here] = torch.tensor([len(labels), _digest("\0".join(labels).encode())])
    (headers,) = _group.all_reduce_sum(step, [headers])
    odd = [r for r in range(1, world) if not torch.equal(headers[r], headers[0])]
    if odd:
        _refuse(what, here, world, [_structure(r, here, headers, labels) for r in odd])
    tables = torch.zeros((world, *table.shape), dtype=torch.int64)
    tables[here] = torch.from_numpy(table)
    (tables,) = _group.all_reduce_sum(step, [tables])
    sentences = describe_differences(labels, tables.numpy(), here)
    if sentences:
        _refuse(what, here, world, sentences)


def _structure(r: int, here: int, headers: torch.Tensor, labels: list[str]) -> str:
    """A rank whose arguments differ from rank 0's: only this rank's names are known."""
    mine, first = int(headers[r][0]), int(headers[0][0])
    listed = f" ({', '.join(labels) or 'none'} here)" if here in (0, r) else ""
    if mine == first:
        return (
            f"{_rank_name(r, here)} passes {mine} array(s) as rank 0 does, but under "
            f"other names or nesting{listed}"
        )
    return f"{_rank_name(r, here)} passes {mine} array(s), rank 0 {first}{listed}"


def _refuse(what: str, here: int, world: int, sentences: list[str]) -> None:
    raise DistributedError(
        f"keras_steps, rank {here} of {world}: the {what} differ between ranks "
        f"({len(sentences)} rank(s) differ from rank 0). {_named(sentences)}. fit() and "
        "evaluate() give each rank its share of the arrays, so every rank must pass the "
        "same ones: seed random data or load it identically, or pass a DataLoader with a "
        "DistributedSampler."
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
