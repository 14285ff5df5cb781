"""Gradient all-reduce overlapped with the backward pass, in buckets, as DDP's reducer does.

Turned on by ``KERAS_STEPS_OVERLAP_GRADIENTS=1`` (see ``_sync.overlap_requested``).
An optimizer's variables are split into buckets in the reverse order of the
variables, as torch's ``DistributedDataParallel`` does (the last layers'
gradients are ready first), with DDP's sizes: 1 MiB for the first, 25 MiB for
the others. A post-accumulate-grad hook on each variable's tensor marks it
ready when ``backward()`` has written its ``.grad``; when every tensor of the
next bucket in line is ready, that bucket's gradients are copied into one flat
buffer and an asynchronous ``all_reduce`` starts while the backward pass goes
on with earlier layers.

``optimizer.apply`` starts the buckets that are still waiting (gradients from
``torch.autograd.grad``, which writes no ``.grad``; ``None`` gradients) and
always the last one, waits for all, and checks that each early bucket sent
exactly the gradients ``apply`` got: the same tensors, not written since (a
second ``backward()`` into them, an edit in place). Each rank's verdicts
travel in the last bucket, so every rank all-reduces the same buckets again
from the given gradients, with no extra collective in the common case.

Every bucket is all-reduced once per ``apply`` on every rank, in a fixed
order, whatever each rank's hooks saw: a rank whose gradient is ``None`` for
some variable (its hook never fired) sends zeros for it at ``apply`` and
still meets the others' collectives. Each bucket carries one presence count
per variable, as ``_sync.average_gradients`` does, so a gradient stays
``None`` only where it is ``None`` on every rank. Sums are element by element
over the same ranks as the single flat all-reduce, so results are bitwise
those of the after-backward path.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from keras_steps._distributed import _group

# torch DDP's defaults: a small first bucket so communication starts early,
# then 25 MiB ones.
FIRST_BUCKET_BYTES = 1 << 20
BUCKET_BYTES = 25 << 20

# Hooks act only inside fit()'s train function: a backward() the user runs
# elsewhere (on rank 0 only, say) must not start collectives the other ranks
# never join. A counter, not a thread-local: on a GPU autograd runs hooks on
# its own threads.
_training = [0]


@contextlib.contextmanager
def training() -> Iterator[None]:
    """Let the hooks start all-reduces while this block runs (a train function call)."""
    _training[0] += 1
    try:
        yield
    finally:
        _training[0] -= 1


def during_training(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a train function) run inside :func:`training`."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with training():
            return fn(*args, **kwargs)

    return run


class _Bucket:
    __slots__ = (
        "dirty",
        "flat",
        "launched",
        "n_extra",
        "params",
        "positions",
        "ready",
        "sent",
        "work",
    )

    def __init__(self, params: list[torch.Tensor], positions: list[int]) -> None:
        self.params = params
        self.positions = positions  # index of each param in the layout's variables
        self.reset()

    def reset(self) -> None:
        self.ready = [False] * len(self.params)
        self.launched = False
        self.dirty = False
        self.sent: list[tuple[torch.Tensor | None, int]] = []
        self.flat: torch.Tensor | None = None
        self.work: Any = None
        self.n_extra = 0

    def start(self, grads: Sequence[torch.Tensor | None], extra: Sequence[float] = ()) -> None:
        """Copy ``grads`` (one per param, ``None`` for zeros) and start the all-reduce.

        The flat buffer holds the gradients, one presence count per param,
        then ``extra``.
        """
        parts = []
        present = []
        for p, g in zip(self.params, grads):
            parts.append(
                g.detach().reshape(-1)
                if g is not None
                else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
            )
            present.append(1.0 if g is not None else 0.0)
        dtype, device = self.params[0].dtype, self.params[0].device
        parts.append(torch.tensor([*present, *extra], dtype=dtype, device=device))
        self.n_extra = len(extra)
        self.flat = torch.cat(parts)
        self.sent = [(g, g._version if g is not None else -1) for g in grads]
        self.work = _group.collective(
            "all-reduce of gradients", dist.all_reduce, self.flat, async_op=True
        )
        self.launched = True

    def finish(self) -> None:
        _group.collective("all-reduce of gradients", self.work.wait)

    def extra(self) -> torch.Tensor:
        return self.flat[self.flat.numel() - self.n_extra :]

    def averaged(self, n: int) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        end = self.flat.numel() - self.n_extra
        counts = self.flat[end - len(self.params) : end].tolist()
        offset = 0
        for p, count in zip(self.params, counts):
            k = p.numel()
            out.append(None if count == 0 else self.flat[offset : offset + k].view(p.shape) / n)
            offset += k
        return out


class OverlappedAverage:
    """Averages one optimizer's gradients over ranks, starting during ``backward()``.

    Built from the variables of the optimizer's first ``apply``; variables a
    later ``apply`` passes that are not among them are averaged after the
    backward pass, as without overlap.

    Args:
        variables: the Keras variables the optimizer updates.
        fallback: ``fallback(grads, variables)`` averages gradients of
            variables that are not in ``variables``.
        first_bucket_bytes: size of the first bucket (the last layers);
            default ``FIRST_BUCKET_BYTES``.
        bucket_bytes: size of the other buckets (default ``BUCKET_BYTES``);
            a tensor larger than this is a bucket of its own.
    """

    def __init__(
        self,
        variables: Sequence[Any],
        fallback: Callable[[list[Any], list[Any]], list[Any]],
        first_bucket_bytes: int | None = None,
        bucket_bytes: int | None = None,
    ) -> None:
        self.variables = list(variables)
        self.fallback = fallback
        self.index: dict[int, tuple[int, int]] = {}  # id(param) -> (bucket, slot)
        self.buckets: list[_Bucket] = []
        self.next = 0
        self.handles = []
        # Buckets started during backward(), at apply, and all-reduced again.
        self.started = {"backward": 0, "apply": 0, "again": 0}
        self._make_buckets(
            FIRST_BUCKET_BYTES if first_bucket_bytes is None else first_bucket_bytes,
            BUCKET_BYTES if bucket_bytes is None else bucket_bytes,
        )
        for b, bucket in enumerate(self.buckets):
            for slot, p in enumerate(bucket.params):
                self.index[id(p)] = (b, slot)
                self.handles.append(p.register_post_accumulate_grad_hook(self._ready))

    def _make_buckets(self, first_cap: int, cap: int) -> None:
        open_: dict[tuple, tuple[list, list, int]] = {}
        limit = first_cap
        for position in reversed(range(len(self.variables))):
            p = self.variables[position].value
            if not p.requires_grad:
                continue
            key = (p.dtype, p.device)
            params, positions, size = open_.get(key, ([], [], 0))
            params.append(p)
            positions.append(position)
            size += p.numel() * p.element_size()
            if size >= limit:
                self.buckets.append(_Bucket(params, positions))
                open_.pop(key, None)
                limit = cap
            else:
                open_[key] = (params, positions, size)
        for params, positions, _ in open_.values():
            self.buckets.append(_Bucket(params, positions))

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _ready(self, param: torch.Tensor) -> None:
        if not _training[0] or not _group.is_active():
            return
        b, slot = self.index[id(param)]
        bucket = self.buckets[b]
        if bucket.launched:
            bucket.dirty = True  # a second backward into a bucket already sent
            return
        bucket.ready[slot] = True
        # Buckets start in order, so every rank issues them in the same order.
        # The last bucket waits for apply (see average).
        while self.next < len(self.buckets) - 1 and all(self.buckets[self.next].ready):
            bucket = self.buckets[self.next]
            bucket.start([p.grad for p in bucket.params])
            self.started["backward"] += 1
            self.next += 1

    # Eager even inside a jit_compile step: which buckets to redo depends on
    # tensor identities and version counters that a traced graph would freeze.
    @torch.compiler.disable
    def average(self, grads: Sequence[Any], variables: Sequence[Any]) -> list[Any]:
        """The average over ranks of ``grads`` (one per variable of ``variables``)."""
        if not self.buckets:
            return self.fallback(list(grads), list(variables))
        given: dict[int, Any] = {}
        others: list[int] = []
        for i, v in enumerate(variables):
            if id(v.value) in self.index:
                given[id(v.value)] = grads[i]
            else:
                others.append(i)
        *early, last = self.buckets
        try:
            for bucket in early[self.next :]:
                bucket.start([given.get(id(p)) for p in bucket.params])
                self.started["apply"] += 1
            # The last bucket (the first layers, ready last) always starts
            # here, carrying each rank's verdict on the early ones: no extra
            # collective to agree on which to redo.
            stale = [1.0 if self._stale(b, given) else 0.0 for b in early]
            last.start([given.get(id(p)) for p in last.params], extra=stale)
            self.started["apply"] += 1
            for bucket in self.buckets:
                bucket.finish()
            for bucket, votes in zip(early, last.extra().tolist()):
                if votes > 0:
                    bucket.start([given.get(id(p)) for p in bucket.params])
                    bucket.finish()
                    self.started["again"] += 1
            n = _group.world_size()
            averaged: dict[int, Any] = {}
            for bucket in self.buckets:
                for p, g in zip(bucket.params, bucket.averaged(n)):
                    averaged[id(p)] = g
        finally:
            for bucket in self.buckets:
                bucket.reset()
            self.next = 0
        out = [averaged.get(id(v.value)) for v in variables]
        if others:
            rest = self.fallback([grads[i] for i in others], [variables[i] for i in others])
            for i, g in zip(others, rest):
                out[i] = g
        return out

    @staticmethod
    def _stale(bucket: _Bucket, given: dict[int, Any]) -> bool:
        """Whether ``bucket`` sent other gradients than ``apply`` got, or ones changed since.

        Only the variables this ``apply`` updates count.
        """
        return any(
            id(p) in given
            and (
                bucket.dirty
                or sent is not given[id(p)]
                or (sent is not None and sent._version != version)
            )
            for p, (sent, version) in zip(bucket.params, bucket.sent)
        )
