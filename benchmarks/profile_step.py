"""Where a keras_steps training step spends its time, on one benchmark workload.

Two views, both of one epoch after a warm-up epoch:

* ``python`` (cProfile): the share of the step spent in each part of Keras's
  and torch's machinery (layer calls, compiled loss, metric updates and
  results, ``optimizer.apply``, backward, callbacks) and in keras_steps' own
  code. Rows nest (the compiled loss calls the loss functions), so shares do
  not add up to 100 %.
* ``ops`` (torch.profiler): operator time per step of keras_steps against the
  plain PyTorch loop on the same network, the operators that differ most first.

Usage::

    .venv/bin/python benchmarks/profile_step.py mlp --spe 16
    .venv/bin/python benchmarks/profile_step.py cnn --view ops
    .venv/bin/python benchmarks/profile_step.py gan --view ops --steps 4

Profiling slows Python-heavy parts more than kernels: read shares, not times.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
warnings.filterwarnings("ignore", message="Your input ran out of data")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

# (label, file suffix, function name): cumulative time of the outermost calls.
PARTS = (
    ("the step (StepModel.train_step)", "keras_steps/_model.py", "train_step"),
    ("layer and model calls (forward)", "keras/src/layers/layer.py", "__call__"),
    ("compiled loss (compute_loss)", "keras/src/trainers/trainer.py", "_compute_loss"),
    ("loss functions (Loss.__call__)", "keras/src/losses/loss.py", "__call__"),
    ("compiled metrics and results (compute_metrics)", "keras/src/trainers/trainer.py",
     "compute_metrics"),
    ("metric results (get_metrics_result)", "keras/src/trainers/trainer.py",
     "get_metrics_result"),
    ("optimizer.apply", "keras/src/optimizers/base_optimizer.py", "apply"),
    ("backward", "torch/_tensor.py", "backward"),
    ("batch callbacks (end)", "keras/src/callbacks/callback_list.py", "on_train_batch_end"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=sorted(wl.WORKLOADS))
    p.add_argument("--view", choices=("python", "ops"), default="python")
    p.add_argument("--spe", type=int, default=1, help="steps_per_execution of keras_steps")
    p.add_argument("--steps", type=int, default=None, help="batches in the profiled epoch")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--top", type=int, default=12, help="rows of the ops view")
    return p.parse_args(argv)


def python_view(model, data, steps: int) -> list[str]:
    profile = cProfile.Profile()
    profile.enable()
    model.fit(data, epochs=1, verbose=0)
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(tt for (_, _, _), (_, _, tt, _, _) in stats.items())
    lines = [
        f"{steps} steps, {total / steps * 1e3:.3f} ms/step under cProfile",
        "",
        "| part | share of the step |",
        "| --- | ---: |",
    ]
    shares = {
        label: sum(
            ct for (file, _, func), (_, _, _, ct, _) in stats.items()
            if func == name and file.endswith(suffix)
        ) / total
        for label, suffix, name in PARTS
    }
    outside = 1 - shares["the step (StepModel.train_step)"]
    lines.append(f"| outside the step: data, fit loop, callbacks | {outside:.1%} |")
    lines += [f"| {label} | {share:.1%} |" for label, share in shares.items()]
    own = sum(
        tt for (file, _, _), (_, _, tt, _, _) in stats.items()
        if f"{os.sep}keras_steps{os.sep}" in file
    )
    lines.append(f"| keras_steps' own code (self time) | {own / total:.1%} |")
    return lines


def _operator_times(run, steps: int) -> dict[str, float]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return {
        event.key: event.self_cpu_time_total / 1e3 / steps
        for event in prof.key_averages()
        if event.key.startswith("aten::")
    }


def ops_view(model, data, workload, steps: int, top: int) -> list[str]:
    _, run_epoch = workload.torch_trainer("cpu")
    torch_data = wl.loader(workload.torch_batches(steps, "cpu"))
    run_epoch(torch_data)  # warm-up
    ours = _operator_times(lambda: model.fit(data, epochs=1, verbose=0), steps)
    theirs = _operator_times(lambda: run_epoch(torch_data), steps)
    lines = [
        "| operator | keras_steps ms/step | torch ms/step |",
        "| --- | ---: | ---: |",
        f"| all aten operators | {sum(ours.values()):.3f} | {sum(theirs.values()):.3f} |",
    ]
    keys = sorted(set(ours) | set(theirs), key=lambda k: -abs(ours.get(k, 0) - theirs.get(k, 0)))
    for key in keys[:top]:
        lines.append(f"| `{key}` | {ours.get(key, 0.0):.3f} | {theirs.get(key, 0.0):.3f} |")
    return lines


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    workload = wl.WORKLOADS[args.workload]
    steps = args.steps or min(workload.steps, 64)
    model = workload.keras_steps_model(steps_per_execution=args.spe)
    data = wl.loader(workload.keras_batches(steps, "cpu"))
    model.fit(data, epochs=1, verbose=0)  # warm-up
    print(f"## {workload.description}; steps_per_execution={args.spe}, {args.view} view\n")
    if args.view == "python":
        lines = python_view(model, data, steps)
    else:
        lines = ops_view(model, data, workload, steps, args.top)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
