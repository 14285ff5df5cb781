"""Why ``jit_compile=True`` loses on a CPU CNN: the same network compiled by plain torch.

Run ``.venv/bin/python benchmarks/compile_cnn.py`` (``--workload cnn`` is the
default; ``--quick`` for a smoke run). In one process, one torch thread,
contenders take turns for ``--reps`` rounds of ``--steps`` updates each:

* ``torch``: the benchmark's plain torch loop on its ``torch.nn`` network;
* ``torch compiled``: the same loop with the network wrapped in
  ``torch.compile(dynamic=False)`` (forward compiled, backward by
  AOTAutograd, the optimizer eager), as a torch user would compile it;
* ``torch compiled, NCHW``: the same with inductor's layout optimisation
  off (``layout_optimization=False``): on CPU with oneDNN, inductor
  otherwise converts every convolution to channels-last;
* ``torch compiled, backward traced``: forward, loss and
  ``torch.autograd.grad`` compiled as one function with dynamo's
  ``trace_autograd_ops`` (one graph, no break at the backward pass, as
  keras-nightly's own ``train_step`` does under ``jit_compile``), Adam eager;
* ``keras`` and ``keras jit``: a plain ``keras.Model`` on the same Keras
  network, ``fit`` eager and with Keras's own ``jit_compile=True``;
* ``keras_steps`` and ``keras_steps jit``: ``StepModel.fit`` eager and with
  ``jit_compile=True``.

A contender that cannot be built (keras_steps on a Keras it does not
support yet) is reported and left out.

Prints one Markdown table: median ms per step, interquartile range, and the
ratio to the eager contender of the same framework within each round.

``--profile`` instead profiles one epoch of ``torch`` and of ``torch
compiled`` with ``torch.profiler`` (inductor's generated kernels named by the
operators they fuse) and prints the operators that take the most time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import statistics
import sys
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")
warnings.filterwarnings("ignore", message="Your input ran out of data")

import keras  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch._inductor.config as inductor_config  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

NETS = {"cnn": wl._cnn_torch_net}


def _nchw():
    return inductor_config.patch(layout_optimization=False)


def torch_contender(workload, batches, compiled: bool, nchw: bool, traced: bool = False):
    torch.manual_seed(0)
    net = NETS[workload.name]()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    params = list(net.parameters())
    forward = torch.compile(net, dynamic=False) if compiled and not traced else net

    def grads(x, y):
        return torch.autograd.grad(nn.functional.cross_entropy(net(x), y), params)

    traced_grads = torch._dynamo.config.patch(trace_autograd_ops=True)(
        torch.compile(grads, dynamic=False)
    )

    def epoch():
        for x, y in batches:
            if traced:
                for p, g in zip(params, traced_grads(x, y)):
                    p.grad = g
            else:
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(forward(x), y).backward()
            opt.step()

    with _nchw() if nchw else contextlib.nullcontext():
        epoch()  # warm-up: compiles
    return epoch


def plain_keras_model(jit_compile):
    inputs = wl._cnn_input("channels_first")
    model = keras.Model(inputs, wl._cnn_keras_layers(inputs, "channels_first"))
    model.compile(**wl._CNN_COMPILE, jit_compile=jit_compile)
    return model


def keras_contender(workload, batches, jit: bool, plain: bool = False):
    keras.utils.set_random_seed(0)
    model = plain_keras_model(jit) if plain else workload.keras_steps_model(jit_compile=jit)
    data = wl.loader(batches)

    def epoch():
        model.fit(data, epochs=1, verbose=0)

    epoch()  # warm-up: compiles
    return epoch


def profile(workload, batches, steps, rows=8) -> None:
    inductor_config.cpp.enable_kernel_profile = True
    for compiled in (False, True):
        epoch = torch_contender(workload, batches, compiled, False)
        with torch.profiler.profile() as prof:
            epoch()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
        print(f"\n{'torch compiled' if compiled else 'torch'}: {total:.1f} ms of operator "
              "time per step (self CPU time, profiled)\n")
        print("| operator | ms/step | calls/step |")
        print("| --- | ---: | ---: |")
        for e in events[:rows]:
            print(f"| `{e.key[:70]}` | {e.self_cpu_time_total / steps / 1e3:.2f} | "
                  f"{e.count / steps:g} |")


def quartiles(values):
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="cnn", choices=sorted(NETS))
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--profile", action="store_true", help="operator profile, torch only")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.steps = 3, 4
    torch.set_num_threads(args.threads)
    workload = wl.WORKLOADS[args.workload]
    torch_batches = workload.torch_batches(args.steps, "cpu")
    keras_batches = workload.keras_batches(args.steps, "cpu")
    if args.profile:
        profile(workload, torch_batches, args.steps)
        return
    start = time.perf_counter()
    makers = {
        "torch": ("torch", lambda: torch_contender(workload, torch_batches, False, False)),
        "torch compiled": ("torch", lambda: torch_contender(workload, torch_batches, True, False)),
        "torch compiled, NCHW": (
            "torch", lambda: torch_contender(workload, torch_batches, True, True)
        ),
        "torch compiled, backward traced": (
            "torch", lambda: torch_contender(workload, torch_batches, True, False, traced=True)
        ),
        "keras": ("keras", lambda: keras_contender(workload, keras_batches, False, plain=True)),
        "keras jit": ("keras", lambda: keras_contender(workload, keras_batches, True, plain=True)),
        "keras_steps": ("keras_steps", lambda: keras_contender(workload, keras_batches, False)),
        "keras_steps jit": ("keras_steps", lambda: keras_contender(workload, keras_batches, True)),
    }
    contenders = {}
    for name, (ref, make) in makers.items():
        try:
            contenders[name] = (ref, make())
        except Exception as exc:  # reported, and the others still run
            print(f"{name}: left out, {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    warm_s = time.perf_counter() - start
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for ref in ("torch", "keras", "keras_steps"):
        times.setdefault(ref, [])
    for r in range(args.reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            contenders[name][1]()
            times[name].append((time.perf_counter() - t) / args.steps * 1e3)
    print(
        f"{args.workload}: {args.reps} rounds of {args.steps} steps, {args.threads} thread(s), "
        f"torch {torch.__version__}, keras {keras.__version__}, load average "
        f"{os.getloadavg()[0]:.2f} at end; warm-up (compiling) {warm_s:.0f} s\n"
    )
    print("| contender | ms/step | IQR % | x eager (same framework) |")
    print("| --- | ---: | ---: | ---: |")
    for name in names:
        q1, med, q3 = quartiles(times[name])
        ref = contenders[name][0]
        if ref not in times or not times[ref]:
            ref = name
        ratio = quartiles([a / b for a, b in zip(times[name], times[ref])])
        print(
            f"| {name} | {med:.2f} | {100 * (q3 - q1) / med:.0f} | "
            f"{ratio[1]:.2f} ({ratio[0]:.2f}-{ratio[2]:.2f}) |"
        )


if __name__ == "__main__":
    main()
