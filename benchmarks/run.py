"""Benchmark keras_steps against hand-written Keras, Lightning and plain PyTorch.

Run ``.venv/bin/python benchmarks/run.py`` (add ``--quick`` for a smoke run,
``--device cuda`` on a GPU machine). It prints one table per workload and
writes them, with the machine described, to ``benchmarks/RESULTS.md``
(``RESULTS-cuda.md`` for ``--device cuda``). See ``benchmarks/README.md``.

Method: every contender trains its own copy of the workload in this one
process. After one untimed warm-up epoch each (its wall time is reported: for
``jit_compile`` it is the compilation), the contenders take turns, one epoch of
``steps`` batches each, for ``reps`` rounds, the order rotating every round.
A contender's time per step is the epoch's wall time over ``steps``: for Keras
from ``on_epoch_begin`` to ``on_epoch_end``, for Lightning from
``on_train_epoch_start`` to ``on_train_epoch_end``, for the torch loop around
the loop, each with ``torch.cuda.synchronize()`` at both ends on a GPU. Ratios
are taken within a round (neighbours in time, so load from other processes
hits both) and the median over rounds is reported, with the interquartile
range as the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings

HERE = pathlib.Path(__file__).resolve().parent

VARIANTS = {
    "keras_steps": "keras_steps StepModel, eager",
    "keras_steps_spe16": "keras_steps, steps_per_execution=16",
    "keras_steps_spe64": "keras_steps, steps_per_execution=64",
    "keras_steps_jit": "keras_steps, jit_compile=True",
    "keras_steps_jit_spe16": "keras_steps, jit_compile=True + steps_per_execution=16",
    "keras_handwritten": "keras.Model with the seed's hand-written train_step",
    "lightning": "PyTorch Lightning, same network and optimizer",
    "torch": "plain PyTorch loop (the floor)",
}
REFERENCES = ("torch", "keras_handwritten")
QUICK = {"reps": 3, "steps": {"mlp": 16, "cnn": 8, "cnn_nhwc": 8, "gan": 4}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny repetition counts (smoke run)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--workloads", default="mlp,cnn,cnn_nhwc,gan",
                   help="comma-separated: mlp,cnn,cnn_nhwc,gan")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, from: " + ",".join(VARIANTS))
    p.add_argument("--reps", type=int, default=None, help="timed epochs per contender")
    p.add_argument("--steps", type=int, default=None, help="batches per timed epoch")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--memory", default="auto", choices=("auto", "off"),
                   help="peak memory: CUDA allocator stats, or on CPU the peak RSS of a "
                        "child process per contender (auto); off skips it")
    p.add_argument("--no-dispatch", action="store_true",
                   help="skip the dispatch benchmark (issue 2: StepModel vs hand-written "
                        "train_step vs keras.Model on the seed MLP)")
    p.add_argument("--no-explain", action="store_true",
                   help="skip the torch.compile report (compile_report.py) under each table")
    p.add_argument("--gan-step", default="gan",
                   help="registered GAN step for keras_steps, roles generator/discriminator "
                        "(default: the catalog's gan step)")
    p.add_argument("--gan-options", default=None, help="JSON options for --gan-step")
    p.add_argument("--output", default=None,
                   help="markdown file to write (default benchmarks/RESULTS.md, "
                        "RESULTS-cuda.md for --device cuda)")
    p.add_argument("--memory-child", nargs=2, metavar=("WORKLOAD", "VARIANT"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args()
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ["KERAS_TORCH_DEVICE"] = ARGS.device
warnings.filterwarnings("ignore", message="Your input ran out of data")
warnings.filterwarnings("ignore", message=".*does not have many workers")

import keras  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(HERE))
import compile_report  # noqa: E402
import workloads as wl  # noqa: E402

import keras_steps  # noqa: E402

CUDA = ARGS.device == "cuda"
if CUDA and not torch.cuda.is_available():
    raise SystemExit("--device cuda, but torch.cuda.is_available() is False here.")
if ARGS.threads:
    torch.set_num_threads(ARGS.threads)


def _clock() -> tuple[float, float]:
    """(wall, process CPU) time, after the device has finished its queued work."""
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def _elapsed(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


# -- contenders ------------------------------------------------------------------------
class _EpochTimer(keras.callbacks.Callback):
    """Times one epoch; overrides no batch hook, so Keras keeps its async callbacks."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = _clock()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = _elapsed(self.start)


class Contender:
    """Something that trains one epoch of a workload and says how long it took."""

    def epoch(self) -> tuple[float, float]:
        """Train one epoch; return its (wall, process CPU) seconds."""
        raise NotImplementedError


class KerasContender(Contender):
    def __init__(self, model, batches):
        self.model, self.loader, self.timer = model, wl.loader(batches), _EpochTimer()

    def epoch(self):
        self.model.fit(self.loader, epochs=1, shuffle=False, verbose=0, callbacks=[self.timer])
        return self.timer.seconds


class TorchContender(Contender):
    def __init__(self, trainer, batches):
        self.modules, self.run_epoch = trainer
        self.loader = wl.loader(batches)

    def epoch(self):
        start = _clock()
        self.run_epoch(self.loader)
        return _elapsed(start)


class LightningContender(Contender):
    def __init__(self, module, batches):
        import logging

        self.pl = wl.import_lightning()
        for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.module, self.loader = module, wl.loader(batches)
        pl = self.pl

        class Timer(pl.Callback):
            def on_train_epoch_start(self, trainer, module):
                self.start = _clock()

            def on_train_epoch_end(self, trainer, module):
                self.seconds = _elapsed(self.start)

        self.timer = Timer()

    def epoch(self):
        trainer = self.pl.Trainer(
            accelerator="gpu" if CUDA else "cpu",
            devices=1,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[self.timer],
        )
        trainer.fit(self.module, train_dataloaders=self.loader)
        return self.timer.seconds


def make_contender(workload, variant: str, steps: int) -> Contender:
    keras.utils.set_random_seed(0)
    if variant.startswith("keras_steps"):
        spe = 64 if "spe64" in variant else 16 if "spe16" in variant else 1
        model = workload.keras_steps_model(steps_per_execution=spe, jit_compile="jit" in variant)
        return KerasContender(model, workload.keras_batches(steps, ARGS.device))
    if variant == "keras_handwritten":
        return KerasContender(
            workload.keras_handwritten_model(), workload.keras_batches(steps, ARGS.device)
        )
    if variant == "torch":
        return TorchContender(
            workload.torch_trainer(ARGS.device), workload.torch_batches(steps, ARGS.device)
        )
    if variant == "lightning":
        module = workload.lightning_module(ARGS.device)
        if module is None:
            raise SystemExit(
                "lightning is not installed: pip install -e '.[bench]', or leave it out "
                "with --variants"
            )
        return LightningContender(module, workload.torch_batches(steps, ARGS.device))
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


# -- measuring -------------------------------------------------------------------------
def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def bench_workload(workload, variants, reps, steps):
    contenders, warmup, failed = {}, {}, {}
    for variant in variants:
        start = time.perf_counter()
        try:
            contender = make_contender(workload, variant, steps)
            contender.epoch()
        except Exception as exc:  # reported in the table; the other contenders still run
            traceback.print_exc()
            failed[variant] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            continue
        contenders[variant] = contender
        warmup[variant] = time.perf_counter() - start
        print(f"  {workload.name}/{variant}: warm-up {warmup[variant]:.1f} s", flush=True)
    running = list(contenders)
    wall = {v: [] for v in running}
    cpu = {v: [] for v in running}
    cuda_peak = dict.fromkeys(running, 0)
    for rep in range(reps):
        shift = rep % max(len(running), 1)
        for variant in running[shift:] + running[:shift]:
            if CUDA:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            seconds, cpu_seconds = contenders[variant].epoch()
            wall[variant].append(seconds / steps)
            cpu[variant].append(cpu_seconds / steps)
            if CUDA:
                peak = torch.cuda.max_memory_allocated() - base
                cuda_peak[variant] = max(cuda_peak[variant], peak)
    rows = {}
    for variant in variants:
        if variant in failed:
            rows[variant] = {"failed": failed[variant]}
            continue
        q1, med, q3 = quartiles(wall[variant])
        rows[variant] = row = {
            "ms": med * 1e3,
            "iqr_pct": (q3 - q1) / med * 100,
            "cpu_ms": statistics.median(cpu[variant]) * 1e3,
            "warmup_s": warmup[variant],
        }
        for ref in REFERENCES:
            if ref in wall:
                r1, rmed, r3 = quartiles([a / b for a, b in zip(wall[variant], wall[ref])])
                row[f"x_{ref}"] = (rmed, r1, r3)
        if CUDA:
            row["memory"] = f"{cuda_peak[variant] / 2**20:.1f} MiB"
    return {"rows": rows, "contenders": contenders, "wall": wall}


def memory_child(workload_name: str, variant: str) -> None:
    """In a fresh process: RSS before training, and the peak RSS of the process."""
    workload = wl.WORKLOADS[workload_name]
    steps = QUICK["steps"][workload_name] if ARGS.quick else workload.steps
    contender = make_contender(workload, variant, steps)
    before = _proc_status_mib("VmRSS")
    for _ in range(3):
        contender.epoch()
    print(json.dumps({"before": before, "peak": _proc_status_mib("VmHWM")}))


def _proc_status_mib(field: str) -> float:
    # VmHWM, not getrusage's ru_maxrss: a child's ru_maxrss starts from its
    # parent's RSS at fork time, which would hide the child's own peak.
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status; CPU memory needs Linux.")


def measure_cpu_memory(workload_name, variants, extra_args):
    out = {}
    for variant in variants:
        cmd = [sys.executable, str(HERE / "run.py"), "--memory-child", workload_name, variant,
               *extra_args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"memory child {workload_name}/{variant} failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out[variant] = (f"{result['peak']:.0f} MiB "
                        f"(+{max(result['peak'] - result['before'], 0):.0f})")
    return out


class _SyncCallbacks(keras.callbacks.Callback):
    """Overrides a batch hook, so Keras runs callbacks in this thread, not a pool."""

    def on_train_batch_end(self, batch, logs=None):
        pass


def check_syncs(workload, steps) -> list[str]:
    """Count host-device synchronisations on CUDA, per batch.

    torch's sync debug mode warns at every synchronising call. Counted over a
    whole epoch of ``fit`` (callbacks included, run in the main thread so that
    each warning is attributed right), and inside the train function alone,
    the part keras_steps runs.
    """
    lines = []
    models = {
        "keras_handwritten": lambda: workload.keras_handwritten_model(),
        "keras_steps": lambda: workload.keras_steps_model(),
        "keras_steps_spe16": lambda: workload.keras_steps_model(steps_per_execution=16),
    }
    for label, build in models.items():
        keras.utils.set_random_seed(0)
        model = build()
        loader = wl.loader(workload.keras_batches(steps, ARGS.device))
        model.fit(loader, epochs=1, shuffle=False, verbose=0)
        inner = []
        function = model.train_function

        def watched(batches, function=function, inner=inner):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    return function(batches)
                finally:
                    inner.extend(caught)

        model.train_function = watched
        with warnings.catch_warnings(record=True) as outside:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model.fit(loader, epochs=1, shuffle=False, verbose=0,
                          callbacks=[_SyncCallbacks()])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        kinds = sorted({str(w.message).splitlines()[0][:80] for w in inner})
        lines.append(
            f"{label}: {(len(outside) + len(inner)) / steps:.2f} per batch over the epoch, "
            f"{len(inner) / steps:.2f} per batch inside the train function"
            + (f" ({'; '.join(kinds)})" if kinds else "")
        )
    return lines


def dispatch_benchmark(reps: int) -> dict:
    """Issue 2: StepModel("supervised") vs the seed's train_step vs keras.Model."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((1024, 32), dtype="float32")
    y = rng.random((1024, 1), dtype="float32")

    def build(kind):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(shape=(32,))
        outputs = keras.layers.Dense(1)(inputs)
        cls = {"StepModel": keras_steps.StepModel, "hand-written train_step": wl.SeedCustomModel,
               "keras.Model": keras.Model}[kind]
        model = cls(inputs, outputs)
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])
        return model

    kinds = ("StepModel", "hand-written train_step", "keras.Model")
    models = {k: build(k) for k in kinds}
    timers = {k: _EpochTimer() for k in kinds}
    times = {k: [] for k in kinds}
    for rep in range(reps + 1):
        order = kinds if rep % 2 else kinds[::-1]
        for kind in order:
            models[kind].fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                             callbacks=[timers[kind]])
            if rep:  # the first round warms up
                times[kind].append(timers[kind].seconds[0] / 32)
    out = {k: {"ms": statistics.median(times[k]) * 1e3} for k in kinds}
    for a, b in (("StepModel", "hand-written train_step"), ("StepModel", "keras.Model"),
                 ("hand-written train_step", "keras.Model")):
        q1, med, q3 = quartiles([s / t for s, t in zip(times[a], times[b])])
        out[f"{a} / {b}"] = (med, q1, q3)
    return out


# -- reporting -------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "CPU": cpu,
        "logical cores (usable by this process)":
            f"{os.cpu_count()} ({len(os.sched_getaffinity(0))})",
        "load average at start (1/5/15 min)": " / ".join(f"{v:.2f}" for v in os.getloadavg()),
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "keras": keras.__version__,
        "keras_steps": keras_steps.__version__,
        "lightning": getattr(wl.import_lightning(), "__version__", "not installed"),
        "device": ARGS.device,
    }
    if CUDA:
        props = torch.cuda.get_device_properties(0)
        info["GPU"] = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                       f"compute capability {props.major}.{props.minor}, "
                       f"CUDA {torch.version.cuda}")
    return info


def _ratio(cell) -> str:
    if cell is None:
        return "-"
    med, q1, q3 = cell
    return f"{med:.2f} ({q1:.2f}-{q3:.2f})"


def table(name, description, rows, steps, reps) -> list[str]:
    lines = [
        f"### {name}: {description}",
        "",
        f"{reps} timed epochs of {steps} steps per contender, alternating. Ratios: median "
        "over rounds (interquartile range); below 1 is faster. CPU ms: process CPU time "
        "per step (all threads), less sensitive than wall time to other processes.",
        "",
        "| contender | ms/step | IQR % | x plain torch | x hand-written Keras "
        "| CPU ms/step | peak memory | warm-up s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, row in rows.items():
        if "failed" in row:
            lines.append(f"| {variant} | failed: {row['failed']} | | | | | | |")
            continue
        lines.append(
            f"| {variant} | {row['ms']:.3f} | {row['iqr_pct']:.0f} | "
            f"{_ratio(row.get('x_torch'))} | {_ratio(row.get('x_keras_handwritten'))} | "
            f"{row['cpu_ms']:.3f} | {row.get('memory', '-')} | {row['warmup_s']:.1f} |"
        )
    return lines


def dispatch_lines(reps: int) -> list[str]:
    d = dispatch_benchmark(reps)
    lines = ["### dispatch (issue 2): seed MLP through fit(x, y), numpy arrays, batch 32",
             "", f"{reps} alternating epochs of 32 steps each.", "",
             "| model | ms/step (median) |", "| --- | ---: |"]
    lines += [f"| {k} | {v['ms']:.3f} |" for k, v in d.items() if isinstance(v, dict)]
    lines += ["", "| ratio | median (IQR) |", "| --- | ---: |"]
    return lines + [f"| {k} | {_ratio(v)} |" for k, v in d.items() if isinstance(v, tuple)]


# RESULTS.md from this heading on is written by the other scripts
# (benchmarks/ddp.py, benchmarks/compile_cnn.py): run.py keeps it.
OTHER_SCRIPTS = "# Results of the other benchmark scripts"


def write_results(output: pathlib.Path, info: dict, sections: list[str]) -> None:
    kept = ""
    if output.exists():
        old = output.read_text()
        if OTHER_SCRIPTS in old:
            kept = "\n" + old[old.index(OTHER_SCRIPTS) :]
    header = [
        "# Benchmark results",
        "",
        f"Written by `benchmarks/run.py {' '.join(sys.argv[1:])}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Method and caveats: benchmarks/README.md.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        "Peak memory: on CUDA the allocator's peak during an epoch above what was allocated "
        "at its start; on CPU the peak RSS of a fresh process that trains only that "
        "contender (in brackets: above its RSS before training, i.e. after imports and "
        "model building).",
        "",
    ]
    output.write_text("\n".join(header) + "\n" + "\n\n".join(sections) + "\n" + kept)


def main() -> None:
    if ARGS.memory_child:
        memory_child(*ARGS.memory_child)
        return
    if ARGS.gan_step != "gan" or ARGS.gan_options:
        wl.GAN_STEP.update(name=ARGS.gan_step,
                           options=json.loads(ARGS.gan_options) if ARGS.gan_options else None)
    names = [n.strip() for n in ARGS.workloads.split(",") if n.strip()]
    variants = [v.strip() for v in ARGS.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    for n in names:
        if n not in wl.WORKLOADS:
            raise SystemExit(f"unknown workload {n!r}; choose from {', '.join(wl.WORKLOADS)}")
    output = pathlib.Path(ARGS.output) if ARGS.output else (
        HERE / ("RESULTS-cuda.md" if CUDA else "RESULTS.md"))
    info = machine()
    started = time.time()
    sections = []
    if not ARGS.no_dispatch:  # first: it is short, and a run cut off later keeps it
        text = "\n".join(dispatch_lines(ARGS.reps or (QUICK["reps"] if ARGS.quick else 21)))
        print("\n" + text + "\n", flush=True)
        sections.append(text)
    for name in names:
        workload = wl.WORKLOADS[name]
        reps = ARGS.reps or (QUICK["reps"] if ARGS.quick else workload.reps)
        steps = ARGS.steps or (
            QUICK["steps"][name] if ARGS.quick else workload.cuda_steps if CUDA else workload.steps
        )
        print(f"{name}: {workload.description}", flush=True)
        result = bench_workload(workload, variants, reps, steps)
        if not CUDA and ARGS.memory == "auto":
            extra = ["--device", ARGS.device, "--gan-step", ARGS.gan_step]
            extra += ["--threads", str(ARGS.threads)] if ARGS.threads else []
            extra += ["--quick"] if ARGS.quick else []
            extra += ["--gan-options", ARGS.gan_options] if ARGS.gan_options else []
            ok = [v for v in variants if "failed" not in result["rows"][v]]
            for variant, text in measure_cpu_memory(name, ok, extra).items():
                result["rows"][variant]["memory"] = text
        lines = table(name, workload.description, result["rows"], steps, reps)
        if name == "gan":
            lines += ["", f"keras_steps runs the GAN with the step `{wl.GAN_STEP['name']}`."]
        if not ARGS.no_explain and any("jit" in v for v in variants):
            lines += ["", *compile_report.lines(compile_report.report(workload, ARGS.device))]
        if CUDA:
            lines += ["", "Host-device synchronisations (torch.cuda sync debug mode):", ""]
            lines += [f"- {line}" for line in check_syncs(workload, steps)]
        text = "\n".join(lines)
        print("\n" + text + "\n", flush=True)
        sections.append(text)
        write_results(output, info, sections)  # as we go: a cut-off run keeps its tables
    info["load average at end (1/5/15 min)"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    info["wall time of the run"] = f"{time.time() - started:.0f} s"
    write_results(output, info, sections)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
