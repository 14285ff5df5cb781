"""Gradient synchronisation on 2 gloo ranks: after the backward pass, overlapped, torch DDP.

Run ``.venv/bin/python benchmarks/ddp.py`` (``--quick`` for a smoke run). It
starts two ranks itself (gloo on this machine's CPU, one torch thread each)
and prints a Markdown section for ``benchmarks/RESULTS.md``.

The network: a CNN on 3x32x32 images (channels-first), three 3x3
convolutions with max-pooling, then Dense(2048 -> 1536) and Dense(10):
3.4 million weights, 13 MiB of float32 gradients per update; batch 32 per
rank, Adam, sparse cross-entropy.

Contenders, each its own copy of the network, all starting from the same
weights, each rank reading its own batches:

* ``keras 1 process``: a ``StepModel`` on rank 0 alone (rank 1 waits in a
  barrier, which sleeps), no averaging: the single-process reference;
* ``keras after backward``: the same on both ranks, gradients averaged in
  ``optimizer.apply`` in one flat all-reduce (keras-steps' default);
* ``keras overlapped``: gradients all-reduced in buckets started by
  post-accumulate-grad hooks during ``backward()``, waited for in ``apply``
  (``average_gradients_in(..., overlap=True)``);
* ``torch 1 process``, ``torch after backward`` (one flat all-reduce after
  ``backward()``, as keras-steps does), ``torch DDP`` (the
  ``DistributedDataParallel`` wrapper, default buckets): the same network in
  ``torch.nn``, the reference.

Keras contenders run ``model.train_step`` directly (the same step ``fit()``
runs, without its data pipeline and callbacks, which are the same for all of
them). Each round times ``steps`` updates of every contender in turn, the
order rotating each round, between barriers; time per step and ratios are
taken within a round and their median (interquartile range) over rounds is
reported. Scaling efficiency is the one-process step time over the two-rank
step time at the same per-rank batch (1.0: two ranks do twice the work in
the same time).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

CONTENDERS = (
    "keras_1p",
    "keras_after",
    "keras_overlap",
    "torch_1p",
    "torch_after",
    "torch_ddp",
)
LABELS = {
    "keras_1p": "keras 1 process",
    "keras_after": "keras after backward (default)",
    "keras_overlap": "keras overlapped (hooks)",
    "torch_1p": "torch 1 process",
    "torch_after": "torch after backward",
    "torch_ddp": "torch DDP",
}
SINGLE = {"keras_after": "keras_1p", "keras_overlap": "keras_1p", "torch_after": "torch_1p",
          "torch_ddp": "torch_1p"}
WORLD = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=8, help="updates per contender per round")
    p.add_argument("--batch", type=int, default=32, help="per rank")
    p.add_argument("--quick", action="store_true", help="3 rounds of 2 steps, batch 8")
    p.add_argument("--output", help="also write the Markdown section to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.batch = 3, 2, 8
    return args


def keras_model(overlap: bool | None):
    import keras

    import keras_steps
    from keras_steps import _distributed

    keras.utils.set_random_seed(0)
    f = "channels_first"
    layers = keras.layers
    inputs = keras.Input((3, 32, 32))
    x = inputs
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", data_format=f)(x)
        x = layers.MaxPooling2D(data_format=f)(x)
    x = layers.Dense(1536, activation="relu")(layers.Flatten(data_format=f)(x))
    model = keras_steps.StepModel(inputs, layers.Dense(10)(x), step="supervised")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build((None, 3, 32, 32))
    model.optimizer.build(model.trainable_variables)
    if overlap is not None:
        _distributed.average_gradients_in(model.optimizer, overlap=overlap)
    return model


def torch_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2048, 1536), nn.ReLU(), nn.Linear(1536, 10),
    )


def make_runners(batches):
    """One function per contender that runs len(batches) updates."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from keras_steps._distributed import _overlap

    runners = {}
    models = {}
    for name, overlap in (("keras_1p", None), ("keras_after", False), ("keras_overlap", True)):
        model = keras_model(overlap)
        models[name] = model

        def run(model=model):
            with _overlap.training():  # as fit()'s train function runs the step
                for x, y in batches:
                    model.train_step((x, y))

        runners[name] = run

    def torch_runner(net, after_backward):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        params = [p for p in net.parameters()]

        def run():
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(net(x), y).backward()
                if after_backward:
                    flat = torch.cat([p.grad.reshape(-1) for p in params])
                    dist.all_reduce(flat)
                    flat /= WORLD
                    offset = 0
                    for p in params:
                        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                        offset += p.numel()
                opt.step()

        return run

    runners["torch_1p"] = torch_runner(torch_net(), False)
    runners["torch_after"] = torch_runner(torch_net(), True)
    runners["torch_ddp"] = torch_runner(nn.parallel.DistributedDataParallel(torch_net()), False)
    return runners, models


def worker(rank: int, port: int, args, queue) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=600))
    g = torch.Generator().manual_seed(100 + rank)
    batches = [
        (torch.randn(args.batch, 3, 32, 32, generator=g),
         torch.randint(0, 10, (args.batch,), generator=g))
        for _ in range(args.steps)
    ]
    runners, models = make_runners(batches)
    if rank == 0:  # warm-up: the first update builds and allocates
        for name in ("keras_1p", "torch_1p"):
            runners[name]()
    dist.barrier()
    for name in ("keras_after", "keras_overlap", "torch_after", "torch_ddp"):
        runners[name]()  # both ranks: the first overlapped update sets the hooks up
    times: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    for r in range(args.rounds):
        order = CONTENDERS[r % len(CONTENDERS):] + CONTENDERS[: r % len(CONTENDERS)]
        for name in order:
            alone = name.endswith("_1p")
            dist.barrier()
            start = time.perf_counter()
            if rank == 0 or not alone:
                runners[name]()
            if not alone:
                dist.barrier()  # the step ends when the slower rank ends
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    dist.barrier()
    if rank == 0:
        after, over = models["keras_after"], models["keras_overlap"]
        diff = max(
            float((a.value - b.value).detach().abs().max())
            for a, b in zip(after.trainable_variables, over.trainable_variables)
        )
        sync = over.optimizer._keras_steps_gradient_sync.overlapped
        queue.put({
            "times": times,
            "weights_diff": diff,
            "buckets": [
                (len(b.params), sum(p.numel() for p in b.params)) for b in sync.buckets
            ],
            "started": dict(sync.started),
        })
    dist.destroy_process_group()


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def report(result, args, wall_s, load) -> str:
    times = result["times"]
    lines = [
        "## Gradient synchronisation on 2 gloo ranks (issue 12, item 4)",
        "",
        f"Written by `benchmarks/ddp.py` on {datetime.datetime.now():%Y-%m-%d %H:%M}: "
        f"{args.rounds} rounds of {args.steps} updates per contender, batch {args.batch} "
        f"per rank, 1 torch thread per rank, CPU ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical cores), load average {load[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end; {wall_s:.0f} s. Network: 3 conv + 2 dense, "
        "3.4 M weights, channels-first. Median over rounds (interquartile range).",
        "",
        "| contender | ms/step | IQR % | x its 1 process | scaling efficiency | "
        "x keras after backward |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in CONTENDERS:
        q1, med, q3 = quartiles(times[name])
        cells = [LABELS[name], f"{med:.1f}", f"{100 * (q3 - q1) / med:.0f}"]
        if name in SINGLE:
            ratio = [t / s for t, s in zip(times[name], times[SINGLE[name]])]
            r1, rm, r3 = quartiles(ratio)
            e1, em, e3 = quartiles([1 / x for x in ratio])
            cells += [f"{rm:.2f} ({r1:.2f}-{r3:.2f})", f"{em:.2f} ({e1:.2f}-{e3:.2f})"]
        else:
            cells += ["1.00", "-"]
        rel = [t / s for t, s in zip(times[name], times["keras_after"])]
        a1, am, a3 = quartiles(rel)
        cells.append(f"{am:.2f} ({a1:.2f}-{a3:.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    buckets = ", ".join(f"{n} tensors / {k / 1e6:.2f} M" for n, k in result["buckets"])
    started = result["started"]
    lines += [
        "",
        f"Overlapped buckets: {buckets}; started during backward {started['backward']}, "
        f"at apply {started['apply']}, all-reduced again {started['again']} times. Weights "
        f"of the two keras contenders on 2 ranks after the run: at most "
        f"{result['weights_diff']:.1e} apart.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    import torch.multiprocessing as mp

    args = parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    load = os.getloadavg()
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, port, args, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    result = None
    while result is None:
        try:
            result = queue.get(timeout=5)
        except Exception:  # queue.Empty: look whether a rank died
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                sys.exit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    for p in procs:
        p.join(timeout=60)
    if any(p.exitcode for p in procs):
        sys.exit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    text = report(result, args, time.perf_counter() - start, load)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
