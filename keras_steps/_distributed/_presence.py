"""Where each rank last said it was, so that a failed collective names the rank that left.

A collective that fails because a peer is gone says only that a connection
closed (gloo) or that time ran out. A rank that quits part-way through
``fit()`` with exit status 0 (``sys.exit(0)`` in a callback, or
``stop_training`` set on that rank alone, so that its script ends) is not
named by ``torchrun`` either, since it did not fail. So each rank writes a
few words about itself to the rendezvous store, the key-value store that
``torchrun``'s agent holds for the whole run (``MASTER_ADDR:MASTER_PORT``):
when it enters and leaves ``fit()``/``evaluate()``, when it fails, and when
its process exits (``atexit``, with the epoch and batch it was at). A rank
whose collective failed reads the others' words and names who left.

Only a few writes per ``fit()`` call, none per batch: the batch position is
kept in memory and written when the process exits. Without ``MASTER_ADDR``
and ``MASTER_PORT`` (a group initialised from a file or another store), or
if the store cannot be reached, the messages simply say less.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import time
from typing import Any

import torch.distributed as dist

# How long a failed rank waits for the others' last words: a rank that
# exits writes them before its connections close, but over another socket.
GRACE_S = 3.0
_POLL_S = 0.1
_INSIDE = ("fit", "evaluate")

_state: dict[str, Any] = {
    "store": None,
    "connected": False,
    "call": None,  # "fit" or "evaluate" while inside one
    "epoch": None,
    "batches": None,  # batches finished in this epoch
    "last": None,  # what this rank did last, for its exit record
    "atexit": False,
    # Kept, not asked for: at exit the script may have destroyed the group.
    "rank": None,
}


def _store() -> Any:
    if _state["connected"]:
        return _state["store"]
    _state["connected"] = True
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    try:
        client = dist.TCPStore(
            host,
            int(port),
            is_master=False,
            timeout=datetime.timedelta(seconds=10),
            wait_for_workers=False,
        )
    except (RuntimeError, ValueError, OSError):
        # Only the messages depend on it: training goes on, they say less.
        return None
    # A run restarted by torchrun (--max-restarts) must not read the words
    # of the attempt before.
    prefix = "keras_steps/{}/{}".format(
        os.environ.get("TORCHELASTIC_RUN_ID", "run"),
        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
    )
    _state["store"] = dist.PrefixStore(prefix, client)
    return _state["store"]


def _write(record: dict[str, Any]) -> None:
    store = _store()
    if store is None:
        return
    try:
        store.set(f"rank{_state['rank']}", json.dumps(record))
    except (RuntimeError, ValueError, OSError):
        _state["store"] = None  # gone (rank 0 held it, outside torchrun): stop trying


def _read(rank: int) -> dict[str, Any] | None:
    store = _state["store"]
    key = f"rank{rank}"
    try:
        if store is None or not store.check([key]):
            return None
        return json.loads(store.get(key))
    except (RuntimeError, ValueError, OSError):
        return None


def _position() -> dict[str, Any]:
    return {"call": _state["call"], "epoch": _state["epoch"], "batches": _state["batches"]}


def entered(call: str) -> None:
    """This rank starts ``fit`` or ``evaluate`` (every rank, before the first collective)."""
    _state["rank"] = dist.get_rank()
    if not _state["atexit"]:
        _state["atexit"] = True
        atexit.register(_exiting)
    _state.update(call=call, epoch=None, batches=None)
    _write({"state": call, **_position()})


def at(epoch: int | None = None, batches: int | None = None) -> None:
    """Where in ``fit`` this rank is (epoch index, batches finished); in memory only.

    Batches are counted at their end: keras_steps' callback runs after the
    user's, which may leave the process in a batch's beginning.
    """
    if epoch is not None:
        _state.update(epoch=epoch, batches=0)
    if batches is not None:
        _state["batches"] = batches


def left(call: str) -> None:
    """This rank returned from ``fit`` or ``evaluate``."""
    _state["last"] = _position()
    _state["call"] = None
    _write({"state": "returned", **_state["last"], "call": call})


def _exiting() -> None:
    _write({"state": "exited", **_position(), "last": _state["last"]})


def _where(record: dict[str, Any]) -> str:
    epoch, batches = record.get("epoch"), record.get("batches")
    call = f"{record.get('call')}()"
    if epoch is None:
        return call
    done = f", after {batches} batch(es) of it" if batches is not None else ""
    return f"{call} in epoch {epoch + 1}{done}"


def _sentence(rank: int, record: dict[str, Any] | None) -> str:
    if record is None or record["state"] in _INSIDE:
        return (
            f"rank {rank} left no word of leaving: it hangs, was killed, or ended "
            "without Python's cleanup (os._exit)"
        )
    if record["state"] == "exited":
        if record.get("call"):
            return f"rank {rank} left: its process exited during {_where(record)}"
        last = record.get("last")
        after = f" after returning from {_where(last)}" if last else ""
        return f"rank {rank} left: its process exited{after}, while this rank went on"
    if record["state"] == "returned":
        return (
            f"rank {rank} left: it returned from {_where(record)} while this rank went "
            "on (did a callback stop training on that rank only?)"
        )
    return f"rank {rank} failed too, in {record.get('what')}"


def after_failure(what: str) -> str:
    """Record this rank's failure in ``what``; describe the other ranks.

    Returns:
        Sentences naming the ranks that left or failed, or ``""`` when the
        store is not reachable.
    """
    if _store() is None:
        return ""
    here = _state["rank"] = dist.get_rank()
    _write({"state": "failed", "what": what, **_position()})
    others = [r for r in range(dist.get_world_size()) if r != here]
    deadline = time.monotonic() + GRACE_S
    while True:
        records = {r: _read(r) for r in others}
        waiting = [r for r, rec in records.items() if rec is None or rec["state"] in _INSIDE]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(_POLL_S)
    gone = [r for r, rec in records.items() if rec is None or rec["state"] != "failed"]
    failed = [r for r in others if r not in gone]
    sentences = [_sentence(r, records[r]) for r in gone + failed]
    if not sentences:
        return ""
    return " " + "; ".join(s[0].upper() + s[1:] for s in sentences) + "."
