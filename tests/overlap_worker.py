"""Overlapped gradient averaging against the after-backward one, under torchrun.

    torchrun --nproc_per_node=2 --standalone tests/overlap_worker.py OUT

For each way a step can produce the gradients it gives ``optimizer.apply``,
two copies of one tiny network (same weights on both ranks) take the same
three updates on the same per-rank data: one averages after the backward
pass, one with ``overlap=True`` and buckets small enough that the network
makes several. Writes OUT/overlap_rank<r>.json: per case, the largest
difference between the two copies' weights and the overlap's counters.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import torch
import torch.distributed as dist

from keras_steps import _distributed
from keras_steps._distributed import _overlap

# Several buckets from a tiny network: 64-byte first bucket, 256-byte others.
_overlap.FIRST_BUCKET_BYTES = 64
_overlap.BUCKET_BYTES = 256


def network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    hidden = keras.layers.Dense(8, activation="tanh")(hidden)
    main = keras.layers.Dense(3)(hidden)
    head = keras.layers.Dense(2)(inputs)  # unused on rank 1 in "none_on_rank_1"
    model = keras.Model(inputs, [main, head])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.5)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def loss_of(model, x, rank, case):
    main, head = model(x)
    loss = (main**2).mean()
    if not (case == "none_on_rank_1" and rank == 1):
        loss = loss + (head**2).mean()
    return loss


def update(model, optimizer, x, rank, case, step):
    variables = model.trainable_variables
    params = [v.value for v in variables]
    if case == "backward_outside_fit" and rank == 0:
        # Outside a train function: its hooks must start no collective.
        loss_of(model, x, rank, case).backward()
    with _overlap.training():  # as fit()'s train function runs it
        for p in params:
            p.grad = None
        _update(model, optimizer, x, rank, case, step, variables, params)


def _update(model, optimizer, x, rank, case, step, variables, params):
    if case == "autograd_grad":
        grads = torch.autograd.grad(loss_of(model, x, rank, case), params)
    else:
        if case == "twice":  # two halves, gradients accumulated in .grad
            loss_of(model, x[:4], rank, case).backward()
            loss_of(model, x[4:], rank, case).backward()
        else:
            loss_of(model, x, rank, case).backward()
        if case == "edited" and rank == 0:
            params[-1].grad.mul_(2.0)  # its bucket, the first, was sent
        grads = [p.grad for p in params]
    if case == "subset" and step % 2:
        variables, grads = variables[:2], grads[:2]
    with torch.no_grad():
        optimizer.apply(list(grads), variables)


CASES = (
    "backward", "twice", "autograd_grad", "none_on_rank_1", "edited", "subset",
    "backward_outside_fit",
)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(10 + rank)
    data = [torch.randn(8, 4, generator=g) for _ in range(3)]
    report = {}
    for case in CASES:
        copies = {}
        for overlap in (False, True):
            model, optimizer = network()
            _distributed.average_gradients_in(optimizer, overlap=overlap)
            for step, x in enumerate(data):
                update(model, optimizer, x, rank, case, step)
            copies[overlap] = (model, optimizer)
        (plain, _), (over, opt) = copies[False], copies[True]
        diff = max(
            float((a.value - b.value).detach().abs().max())
            for a, b in zip(plain.trainable_variables, over.trainable_variables)
        )
        sync = opt._keras_steps_gradient_sync.overlapped
        report[case] = {
            "diff": diff,
            "buckets": len(sync.buckets),
            "started": sync.started,
            "weights": [float(v.value.detach().sum()) for v in over.trainable_variables],
        }
    Path(sys.argv[1], f"overlap_rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
