"""Show where one training step synchronises the host with the GPU (CUDA only).

Run ``python benchmarks/cuda_syncs.py`` on a GPU machine. It trains the seed's
MLP with ``StepModel(step="supervised")`` for one batch, then runs one more
under ``torch.cuda.set_sync_debug_mode("warn")`` and prints, for each
synchronising call, the innermost frames of Keras / keras_steps code that made
it. ``benchmarks/run.py --device cuda`` counts them; this says where they are.
"""

from __future__ import annotations

import collections
import os
import pathlib
import sys
import traceback
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import workloads as wl


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("cuda_syncs.py needs a GPU (torch.cuda.is_available() is False).")
    names = sys.argv[1:] or ["mlp", "gan"]
    for name in names:
        workload = wl.WORKLOADS[name]
        model = workload.keras_steps_model()
        batches = workload.keras_batches(2, "cuda")
        model.fit(wl.loader(batches[:1]), epochs=1, verbose=0)
        sites: collections.Counter[str] = collections.Counter()

        def record(message, category, filename, lineno, file=None, line=None, sites=sites):
            frames = [
                f
                for f in traceback.extract_stack()[:-1]
                if "keras" in f.filename or "workloads" in f.filename
            ]
            where = " <- ".join(
                f"{pathlib.Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:][::-1]
            )
            sites[where] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model.train_function([batches[1]])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        print(f"{name}: {sum(sites.values())} synchronising calls in one train step")
        for where, count in sites.most_common():
            print(f"  {count} x {where}")
    print("keras", keras.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
