"""The process group: its setup, this rank, and flat collectives that fail clearly."""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from keras_steps._distributed import _presence
from keras_steps._errors import DistributedError

TIMEOUT_ENV = "KERAS_STEPS_DIST_TIMEOUT"
# torch's own default for both gloo and NCCL: long enough for a slow
# checkpoint on rank 0, and still an error rather than a hang.
_DEFAULT_TIMEOUT_S = 1800

_state: dict[str, Any] = {"timeout_s": None}


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


def collective(what: str, op: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run one collective; a failure names this rank and the likely cause."""
    try:
        return op(*args, **kwargs)
    except RuntimeError as err:
        timeout = _state["timeout_s"]
        limit = f"{timeout:g} s ({TIMEOUT_ENV})" if timeout else "the process group's timeout"
        others = _presence.after_failure(what)
        raise DistributedError(
            f"keras_steps, rank {rank()} of {world_size()}: {what} failed. Another "
            f"rank stopped (its own error is in its output and torchrun's summary), "
            f"took longer than {limit}, or ran a different number of training "
            f"steps or updates.{others} Cause: {err}"
        ) from err


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
        collective(what, op, flat)
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            out[i] = flat[offset : offset + n].view(tensors[i].shape).to(dtype)
            offset += n
    return out


def all_reduce_sum(what: str, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return _flat_collective(what, tensors, dist.all_reduce)


def broadcast(what: str, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return _flat_collective(what, tensors, lambda flat: dist.broadcast(flat, src=0))
