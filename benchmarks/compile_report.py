"""What torch.compile makes of a keras_steps train step under ``jit_compile=True``.

Two views of one benchmark workload:

* ``torch._dynamo.explain`` of one train step, with the static shapes that
  ``jit_compile`` uses: the graphs, and the graph breaks, each located at the
  innermost line outside torch that caused it (Keras's or the step's);
* dynamo's counters over a real ``jit_compile`` epoch of three batches: the
  graphs it compiled and the frames it left to run eagerly. A graph break
  inside a loop makes dynamo skip the whole frame that holds the loop, and a
  code object that reaches ``torch._dynamo.config.recompile_limit`` (every
  Keras layer shares a few) runs eagerly from then on. ``explain`` sees
  neither.

Usage::

    .venv/bin/python benchmarks/compile_report.py gan

``benchmarks/run.py`` adds the same report under each workload's table.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import pathlib
import re
import sys
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")
warnings.filterwarnings("ignore", message="Your input ran out of data")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

# Dynamo names the code object that reached the limit only in this warning.
_LIMIT = re.compile(r"hit config\.recompile_limit.*?function: '([^']+)' \(([^)]+)\)", re.S)
_SKIPPED = re.compile(r"frame skipped: (\S+) \((.+) line (\d+)\)")
_TORCH = os.path.dirname(torch.__file__) + os.sep
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _short(path: str, line: int | str) -> str:
    # keras/src/..., plugins/... : whose code it is, not just a file name.
    path = pathlib.Path(path)
    roots = [r for r in (_ROOT, *map(pathlib.Path, sys.path)) if path.is_relative_to(r)]
    if not roots:
        return f"{path.name}:{line}"
    return f"{path.relative_to(max(roots, key=lambda r: len(r.parts))).as_posix()}:{line}"


def _where(frames) -> str:
    # torch's own frames (its polyfills, say) do not tell a reader what to change.
    for frame in reversed(frames or []):
        if not frame.filename.startswith(_TORCH):
            return _short(frame.filename, frame.lineno)
    return "?"


def explain(model, batch) -> dict:
    """Graphs and graph breaks of ``model.train_step(batch)``, static shapes.

    Returns:
        ``{"graphs": int, "breaks": int, "reasons": Counter}``, the reasons
        keyed ``"<first line of dynamo's reason> (<file>:<line>)"``.
    """
    torch._dynamo.reset()
    # What torch.compile(dynamic=False), as jit_compile calls it, sets.
    with torch._dynamo.config.patch(
        automatic_dynamic_shapes=False, assume_static_by_default=True
    ):
        result = torch._dynamo.explain(model.train_step)(batch)
    torch._dynamo.reset()
    reasons = collections.Counter(
        f"{brk.reason.strip().splitlines()[0]} ({_where(brk.user_stack)})"
        for brk in result.break_reasons
    )
    return {
        "graphs": result.graph_count,
        "breaks": result.graph_break_count,
        "reasons": reasons,
    }


class _LimitWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.functions: list[str] = []

    def emit(self, record):
        match = _LIMIT.search(record.getMessage())
        if match:
            path, _, line = match[2].rpartition(":")
            self.functions.append(f"{match[1]} ({_short(path, line)})")


def compiled_epoch(model, batches) -> dict:
    """Dynamo's counters over one ``fit`` epoch of a ``jit_compile=True`` model.

    Returns:
        ``{"graphs": int, "frames": int, "skipped": [str], "limited": [str]}``:
        the graphs compiled, the frames dynamo was handed, the frames it ran
        eagerly because of a graph break in a loop, and the functions that
        reached the recompile limit (``name (file:line)``).
    """
    torch._dynamo.reset()
    counters.clear()
    handler = _LimitWarnings()
    logger = logging.getLogger("torch._dynamo.convert_frame")
    logger.addHandler(handler)
    try:
        model.fit(wl.loader(batches), epochs=1, verbose=0, shuffle=False)
    finally:
        logger.removeHandler(handler)
    skipped = sorted({
        f"{m[1]} ({_short(m[2], m[3])})"
        for key in counters["unimplemented"]
        for m in [_SKIPPED.search(key)]
        if m
    })
    result = {
        "graphs": counters["stats"]["unique_graphs"],
        "frames": counters["frames"]["total"],
        "skipped": skipped,
        "limited": sorted(set(handler.functions)),
    }
    torch._dynamo.reset()
    return result


def report(workload, device: str) -> dict:
    """Both views of ``workload``'s keras_steps train step (see the module docstring)."""
    batches = workload.keras_batches(3, device)
    model = workload.keras_steps_model()
    # One eager batch builds the optimizers and metrics that explain() traces.
    model.fit(wl.loader(batches[:1]), epochs=1, verbose=0, shuffle=False)
    return {
        "explain": explain(model, batches[1]),
        "epoch": compiled_epoch(workload.keras_steps_model(jit_compile=True), batches),
    }


def lines(result: dict) -> list[str]:
    """Markdown lines for :func:`report`'s result."""
    ex, ep = result["explain"], result["epoch"]
    out = [
        "torch.compile of the keras_steps train step (static shapes, as "
        f"`jit_compile=True`): {ex['graphs']} graph(s), {ex['breaks']} graph break(s).",
    ]
    out += [
        f"- {reason}" + (f" x{n}" if n > 1 else "")
        for reason, n in sorted(ex["reasons"].items())
    ]
    out += [
        "",
        f"In a `jit_compile=True` epoch of 3 batches: {ep['graphs']} graph(s) compiled, "
        f"{ep['frames']} frame(s) handed to dynamo.",
        "- run eagerly, a graph break in a loop: "
        + (", ".join(f"`{s}`" for s in ep["skipped"]) or "none"),
        "- run eagerly past the recompile limit: "
        + (", ".join(f"`{s}`" for s in ep["limited"]) or "none"),
    ]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=sorted(wl.WORKLOADS))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("\n".join(lines(report(wl.WORKLOADS[args.workload], args.device))))


if __name__ == "__main__":
    main()
