"""Data-parallel ``fit()`` under ``torchrun``: the process group, gradient
averaging, data sharding, metric aggregation and rank-0-only side effects.

Nothing here runs unless a ``torch.distributed`` process group is initialised:
:class:`~keras_steps.StepModel` initialises one when ``torchrun`` started the
process with ``WORLD_SIZE > 1`` (or uses the one the script made itself).
See ``docs/distributed.md`` for the design and what was tested.

Why not the ``torch.nn.parallel.DistributedDataParallel`` wrapper: it averages
gradients only for a forward pass that goes through the wrapper, and steps
call their networks directly (``model.models["generator"](z)``; Keras's own
``train_step`` calls ``self(x)``), so their gradients would never be
synchronised. DDP's algorithm is kept: weights broadcast from rank 0 at the
start, then every gradient averaged over ranks (sum / world size) in flat
buckets before the optimizer uses it. Here the averaging happens in
``optimizer.apply``, which every update goes through whatever the step did
to get its gradients (``keras_steps.backprop``, Keras's ``train_step``,
``torch.autograd.grad`` with a double backward, several phases per batch).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
import torch
import torch.distributed as dist
from keras.src import tree
from keras.src.trainers.data_adapters import array_data_adapter, array_slicing
from keras.src.trainers.data_adapters.data_adapter_utils import (
    unpack_x_y_sample_weight,
)

from keras_steps._errors import DistributedError, StepError

__all__ = ["batch_random"]

TIMEOUT_ENV = "KERAS_STEPS_DIST_TIMEOUT"
# torch's own default for both gloo and NCCL: long enough for a slow
# checkpoint on rank 0, and still an error rather than a hang.
_DEFAULT_TIMEOUT_S = 1800

# Callbacks that write files, print, or talk to a server: rank 0's alone.
_RANK_ZERO_CALLBACKS = (
    keras.callbacks.BackupAndRestore,
    keras.callbacks.CSVLogger,
    keras.callbacks.ModelCheckpoint,
    keras.callbacks.ProgbarLogger,
    keras.callbacks.RemoteMonitor,
    keras.callbacks.TensorBoard,
    *((keras.callbacks.OrbaxCheckpoint,) if hasattr(keras.callbacks, "OrbaxCheckpoint") else ()),
)

_state: dict[str, Any] = {"timeout_s": None}


# -- the process group ----------------------------------------------------------
def select_device() -> None:
    """Pin this process to its GPU (``LOCAL_RANK``) before any tensor exists.

    Keras puts variables on ``"cuda"``, the current device, so it must be
    this rank's own before the first layer is built. A ``KERAS_TORCH_DEVICE``
    that the user set wins.
    """
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None or not torch.cuda.is_available():
        return
    if "KERAS_TORCH_DEVICE" in os.environ:
        return
    device = int(local_rank)
    if device >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK is {device} but this machine shows "
            f"{torch.cuda.device_count()} GPU(s): start at most that many processes "
            "per node (torchrun --nproc_per_node), or set KERAS_TORCH_DEVICE."
        )
    torch.cuda.set_device(device)


def setup() -> None:
    """Initialise the default process group when ``torchrun`` asks for several ranks.

    Uses NCCL when CUDA is available, gloo otherwise, the ``env://``
    rendezvous that ``torchrun`` prepares, and a timeout (``KERAS_STEPS_DIST_TIMEOUT``
    seconds, default 1800) so that a rank that died or hangs turns into an
    error on the others instead of a hang. A group the script initialised
    itself is used as it is.
    """
    if not dist.is_available() or dist.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    timeout_s = _timeout_s()
    backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _state["timeout_s"] = timeout_s
    atexit.register(_destroy)


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, str(_DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV} is {raw!r}; expected a number of seconds > 0.")
    return value


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    """Whether a process group is initialised, so that fit() is data-parallel."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def _collective(what: str, op: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run one collective; a failure names this rank and the likely cause."""
    try:
        return op(*args, **kwargs)
    except RuntimeError as err:
        timeout = _state["timeout_s"]
        limit = f"{timeout:g} s ({TIMEOUT_ENV})" if timeout else "the process group's timeout"
        raise DistributedError(
            f"keras_steps, rank {rank()} of {world_size()}: {what} failed. Another "
            f"rank stopped (its own error is in its output and torchrun's summary), "
            f"took longer than {limit}, or ran a different number of training "
            f"steps or updates. Cause: {err}"
        ) from err


# -- flat buckets -----------------------------------------------------------------
def _buckets(tensors: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of ``tensors`` grouped by (dtype, device): one flat buffer each."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    return groups


def _flat_collective(
    what: str, tensors: Sequence[torch.Tensor], op: Callable
) -> list[torch.Tensor]:
    """Apply ``op(flat_buffer)`` in place to each dtype's flat concatenation.

    Returns new tensors shaped like ``tensors``, in the same order.
    """
    out: list[torch.Tensor] = [None] * len(tensors)  # type: ignore[list-item]
    for (dtype, _), indices in _buckets(tensors).items():
        wire = torch.uint8 if dtype == torch.bool else dtype
        flat = torch.cat([tensors[i].detach().reshape(-1).to(wire) for i in indices])
        _collective(what, op, flat)
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            out[i] = flat[offset : offset + n].view(tensors[i].shape).to(dtype)
            offset += n
    return out


def _all_reduce_sum(what: str, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return _flat_collective(what, tensors, dist.all_reduce)


def _broadcast(what: str, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return _flat_collective(what, tensors, lambda flat: dist.broadcast(flat, src=0))


# -- gradients ---------------------------------------------------------------------
def average_gradients(grads: Sequence[Any], variables: Sequence[Any]) -> list[Any]:
    """Average ``grads`` over all ranks: one flat all-reduce per dtype.

    A gradient that is ``None`` on a rank counts as zeros there (that rank's
    loss did not depend on the variable); it stays ``None`` only if it is
    ``None`` on every rank, so optimizers skip the same variables everywhere.
    """
    if len(grads) != len(variables):
        raise StepError(
            f"optimizer.apply got {len(grads)} gradients for {len(variables)} variables."
        )
    if not grads:
        return []
    device = variables[0].value.device
    tensors = [
        g if g is not None else torch.zeros(v.shape, dtype=v.value.dtype, device=device)
        for g, v in zip(grads, variables)
    ]
    present = torch.tensor([g is not None for g in grads], dtype=torch.float32, device=device)
    *summed, counts = _all_reduce_sum("all-reduce of gradients", [*tensors, present])
    n = world_size()
    return [None if c == 0 else s / n for s, c in zip(summed, counts.tolist())]


def average_gradients_in(optimizer: Any) -> None:
    """Make ``optimizer.apply`` average its gradients over ranks first.

    Every update goes through ``apply`` (``keras_steps.backprop``, Keras's
    ``train_step``, ``apply_gradients``), so this covers every step. For a
    ``LossScaleOptimizer`` the outer ``apply`` is wrapped: all ranks then see
    the same gradients and skip a non-finite step together. Idempotent; a
    no-op while no process group is initialised.
    """
    if getattr(optimizer, "_keras_steps_averages_gradients", False):
        return
    local_apply = optimizer.apply

    def apply(grads, trainable_variables=None):
        if is_active():
            variables = (
                optimizer._trainable_variables
                if trainable_variables is None
                else list(trainable_variables)
            )
            grads = average_gradients(list(grads), variables)
        return local_apply(grads, trainable_variables)

    apply.__doc__ = local_apply.__doc__
    optimizer.apply = apply
    optimizer._keras_steps_averages_gradients = True


# -- state that is not a gradient ---------------------------------------------------------
def _unique(variables: Iterable[Any]) -> list[Any]:
    seen: set[int] = set()
    out = []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _assign(variables: Sequence[Any], values: Sequence[torch.Tensor]) -> None:
    for v, value in zip(variables, values):
        v.assign(value)


def broadcast_from_rank_zero(model: Any) -> None:
    """Give every rank rank 0's model and optimizer state and start epoch.

    Runs when fit() starts (after callbacks' ``on_train_begin``, so a
    ``BackupAndRestore`` restore on rank 0 reaches every rank) and when a
    standalone evaluate() starts. Includes seed generators, so random streams
    agree across ranks (see :func:`batch_random`), and frozen networks once.
    """
    variables = list(model.variables)
    for optimizer in model.optimizers.values():
        variables.extend(optimizer.variables)
    variables = _unique(variables)
    if variables:
        values = _broadcast("broadcast of rank 0's weights", [v.value for v in variables])
        _assign(variables, values)
    epoch = [getattr(model, "_initial_epoch", None)]
    _collective("broadcast of the initial epoch", dist.broadcast_object_list, epoch, src=0)
    model._initial_epoch = epoch[0]


def trained_state(model: Any) -> list[Any]:
    """Float non-trainable weights that training updates (BatchNorm statistics).

    Only those of the networks that have an optimizer, and none of a frozen
    (``trainable=False``) layer's: a frozen teacher is never synchronised.
    """
    networks = _unique(model.models[role] for role in model.optimizers if role in model.models)
    frozen: set[int] = set()
    for network in networks:
        for layer in network._flatten_layers(include_self=True):
            if not layer.trainable:
                frozen.update(id(w) for w in layer.weights)
    return _unique(
        v
        for network in networks
        for v in network.non_trainable_weights
        if id(v) not in frozen and keras.backend.is_float_dtype(v.dtype)
    )


class TrainedState:
    """Averages a model's :func:`trained_state` over ranks after each step.

    Each rank updated BatchNorm statistics from its own batch; the mean of
    the ranks' moving means is the moving mean of the global batch's means.
    A plain object, so that Keras does not track the cached variable list as
    the model's own.
    """

    def __init__(self) -> None:
        self._variables: list[Any] | None = None

    def average(self, model: Any) -> None:
        if self._variables is None:
            self._variables = trained_state(model)
        if not self._variables:
            return
        summed = _all_reduce_sum(
            "all-reduce of BatchNorm-like statistics", [v.value for v in self._variables]
        )
        n = world_size()
        _assign(self._variables, [s / n for s in summed])


# -- metrics and logs ---------------------------------------------------------------
@contextlib.contextmanager
def global_metric_state(metrics: Sequence[Any]):
    """Temporarily hold the metrics' state aggregated over all ranks.

    Metric variables say how to aggregate: ``"sum"`` (Keras's default for
    metrics: totals, counts, confusion matrices) is summed, ``"mean"``
    averaged, ``"only_first_replica"`` taken from rank 0, ``"none"`` left
    local. The local state comes back on exit, so reading results twice
    never counts other ranks twice.
    """
    variables = _unique(v for m in metrics for v in m.variables)
    kinds = {"sum": [], "mean": [], "only_first_replica": []}
    for v in variables:
        if v.aggregation in kinds:
            kinds[v.aggregation].append(v)
    local = [v.value.detach().clone() for v in variables]
    try:
        reduce = kinds["sum"] + kinds["mean"]
        if reduce:
            summed = _all_reduce_sum("all-reduce of metric state", [v.value for v in reduce])
            n_sum = len(kinds["sum"])
            n = world_size()
            _assign(reduce, summed[:n_sum] + [s / n for s in summed[n_sum:]])
        if kinds["only_first_replica"]:
            first = kinds["only_first_replica"]
            _assign(first, _broadcast("broadcast of metric state", [v.value for v in first]))
        yield
    finally:
        _assign(variables, local)


def global_logs(model: Any, logs: Any) -> Any:
    """The epoch's logs over all ranks (what History and the progress bar get).

    Like Keras, the model's metric results when the step's logs name exactly
    those metrics; otherwise the step's last logs, each value replaced by the
    same-named metric's global result or, for other numbers, its mean over
    ranks.
    """
    with global_metric_state(model.metrics):
        results = {k: _detached(v) for k, v in model.get_metrics_result().items()}
    if not isinstance(logs, dict) or set(logs) == set(results):
        return results
    out = dict(logs)
    others = sorted(k for k, v in logs.items() if k not in results and _is_number(v))
    for k in logs:
        if k in results:
            out[k] = results[k]
    if others:
        values = torch.tensor(
            [float(keras.ops.convert_to_numpy(logs[k])) for k in others], dtype=torch.float64
        )
        (summed,) = _all_reduce_sum("all-reduce of logs", [values])
        out.update(zip(others, (summed / world_size()).tolist()))
    return out


def _detached(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    shape = getattr(value, "shape", None)
    return shape is not None and tuple(shape) == ()


# -- data ----------------------------------------------------------------------------
def shard(data: Any, drop_remainder: bool) -> Any:
    """This rank's rows of array data: rows ``rank, rank + W, rank + 2W, ...``.

    The same split as ``DistributedSampler``: with ``shuffle=False`` and
    per-rank batch B, step k's global batch is the rows a single process
    with batch ``W * B`` reads at step k. ``drop_remainder`` drops the last
    ``len % W`` rows so that every rank runs the same number of training
    steps (each step all-reduces); evaluation keeps every row.
    """
    world, r = world_size(), rank()

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
    (rank0,) = _broadcast(f"comparison of {what} across ranks", [mine])
    differs = torch.tensor([0.0 if torch.equal(mine, rank0) else 1.0], dtype=torch.float64)
    (count,) = _all_reduce_sum(f"comparison of {what} across ranks", [differs])
    if count.item() > 0:
        raise DistributedError(
            f"keras_steps, rank {rank()} of {world_size()}: the {what} differ between ranks "
            f"({int(count.item())} rank(s) differ from rank 0: rows {mine[0]:.0f} here, "
            f"{rank0[0]:.0f} on rank 0). fit() and evaluate() give each rank its share of "
            "the arrays, so every rank must pass the same ones: seed random data or load it "
            "identically, or pass a DataLoader with a DistributedSampler."
        )


def _warn_unsharded_loader(x: Any) -> None:
    loader = x if isinstance(x, torch.utils.data.DataLoader) else None
    if loader is None or isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return
    sampler = loader.sampler
    if loader.batch_sampler is not None:
        sampler = getattr(loader.batch_sampler, "sampler", sampler)
    if not isinstance(sampler, torch.utils.data.DistributedSampler):
        warnings.warn(
            f"keras_steps, rank {rank()} of {world_size()}: this DataLoader has no "
            "DistributedSampler, so every rank reads the same samples. Pass "
            "sampler=torch.utils.data.DistributedSampler(dataset) (see docs/distributed.md).",
            stacklevel=4,
        )


def _distributed_sampler(x: Any) -> Any:
    if not isinstance(x, torch.utils.data.DataLoader):
        return None
    for sampler in (x.sampler, getattr(x.batch_sampler, "sampler", None)):
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            return sampler
    return None


def _rank_callbacks(callbacks: Any) -> list:
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    callbacks = list(callbacks or [])
    if rank() != 0:
        callbacks = [cb for cb in callbacks if not isinstance(cb, _RANK_ZERO_CALLBACKS)]
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
    if split and args.get("validation_data") is None and is_array_data((x, y, sample_weight)):
        (x, y, sample_weight), args["validation_data"] = array_slicing.train_validation_split(
            (x, y, sample_weight), validation_split=split
        )
        args["validation_split"] = 0.0
    if is_array_data((x, y, sample_weight)):
        check_same_arrays((x, y, sample_weight), "training arrays")
        args["x"], args["y"], args["sample_weight"] = shard((x, y, sample_weight), True)
    else:
        _warn_unsharded_loader(x)
    val = args.get("validation_data")
    if val is not None and isinstance(val, (tuple, list)):
        val = unpack_x_y_sample_weight(tuple(val))
        if is_array_data(val):
            check_same_arrays(val, "validation arrays")
            args["validation_data"] = shard(val, False)
    _rank_zero_output(args)
    args["callbacks"].append(_DistributedRun(_distributed_sampler(x)))
    return args


def evaluate_arguments(model: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``evaluate``'s bound arguments for this rank (see fit_arguments)."""
    if args.get("kwargs", {}).get("_use_cached_eval_dataset"):
        return args  # inside fit(): data already sharded, callbacks already set
    data = (args.get("x"), args.get("y"), args.get("sample_weight"))
    if is_array_data(data):
        check_same_arrays(data, "evaluation arrays")
        args["x"], args["y"], args["sample_weight"] = shard(data, False)
    else:
        _warn_unsharded_loader(args.get("x"))
    _rank_zero_output(args)
    args["callbacks"].append(_DistributedRun(None))
    return args


def _rank_zero_output(args: dict[str, Any]) -> None:
    if rank() != 0:
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
        broadcast_from_rank_zero(self.model)

    def on_train_end(self, logs=None):
        self._fitting = False

    def on_test_begin(self, logs=None):
        if not self._fitting:
            broadcast_from_rank_zero(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if self._sampler is not None:
            self._sampler.set_epoch(epoch)


# -- random draws --------------------------------------------------------------------
def batch_random(
    draw: Callable, shape: Sequence[int], *, seed: Any = None, blocks: int = 1, **kwargs: Any
) -> Any:
    """Random values for this rank's part of the global batch.

    On one process this is ``draw(shape, seed=seed, **kwargs)``. Under
    ``torchrun`` with W ranks it draws the *global* batch,
    ``(W * shape[0], *shape[1:])``, from ``seed`` (seed generators are equal
    on all ranks: fit() starts from rank 0's) and returns this rank's rows.
    So the ranks draw distinct noise, and together exactly what one process
    draws for the global batch: W ranks with batch B train like one process
    with batch W * B, noise included.

    Rows are split like the data (see ``docs/distributed.md``): global row
    ``j * W + rank`` is this rank's row ``j``. A draw made of ``blocks``
    stacked per-example blocks (e.g. labels for ``[fakes; reals]``) is split
    block by block.

    Example::

        latents = keras_steps.batch_random(
            keras.random.normal, (batch_size, latent_dim), seed=seed_generator)

    Args:
        draw: a ``keras.random`` function taking ``shape`` and ``seed``
            (``normal``, ``uniform``, ``truncated_normal``, ``randint``, ...).
        shape: this rank's shape; ``shape[0]`` is ``blocks`` times the batch.
        seed: a ``keras.random.SeedGenerator`` (or an int), as for ``draw``.
        blocks: how many per-example blocks are stacked along axis 0.
        **kwargs: passed to ``draw`` (``mean``, ``stddev``, ``dtype``, ...).

    Returns:
        A tensor of ``shape``.
    """
    shape = tuple(int(d) for d in shape)
    if blocks < 1 or not shape or shape[0] % blocks:
        raise StepError(
            f"batch_random: shape[0] must be a multiple of blocks={blocks}; got shape {shape}."
        )
    world = world_size()
    if world == 1:
        return draw(shape, seed=seed, **kwargs)
    per_block = shape[0] // blocks
    full = draw((world * shape[0], *shape[1:]), seed=seed, **kwargs)
    rows = full.reshape(blocks, per_block, world, *shape[1:])[:, :, rank()]
    return rows.reshape(shape)
