#!/usr/bin/env bash
# Data-parallel fit() on a machine with one NVIDIA GPU (not part of CI, which has none).
# 1. NCCL with one rank: every collective goes through NCCL on CUDA tensors, and
#    the weights must match a run without a process group.
# 2. The CPU test suite (tests/test_distributed.py) with both ranks on the one GPU:
#    NCCL refuses two ranks on one device, so the group is gloo over CUDA tensors.
# Needs a python3 with CUDA torch; wheels in .whl/ (keras, pydantic, ...) are installed
# to /tmp/site first when present. Logs go to $OUT (or /tmp/ddp-gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=torch PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=2
out="${OUT:-/tmp/ddp-gpu}"
mkdir -p "$out"
nvidia-smi -L
python3 -c "import torch, keras; print('torch', torch.__version__, 'keras', keras.__version__,
      torch.cuda.get_device_name(0), 'nccl', torch.cuda.nccl.version())" || exit 1

python3 tests/ddp_worker.py train "$out/one_process" >"$out/one_process.log" 2>&1
echo "one process, no process group: rc=$?"
DDP_TEST_BACKEND=nccl python3 -m torch.distributed.run --nproc_per_node=1 --standalone \
    tests/ddp_worker.py train "$out/nccl_one_rank" >"$out/nccl_one_rank.log" 2>&1
echo "NCCL, one rank: rc=$?"
python3 - "$out" <<'PY'
import sys, numpy as np
from pathlib import Path
out = Path(sys.argv[1])
for name in ("supervised", "loader", "gan", "wgan_gp", "vae", "adversarial", "distill",
             "distill_plain", "resume"):
    a, b = np.load(out / "one_process" / f"{name}_rank0.npz"), np.load(out / "nccl_one_rank" / f"{name}_rank0.npz")
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
    print(f"NCCL one rank vs no process group, {name}: max |difference| {diff:.3g}",
          "OK" if diff <= 1e-6 else "MISMATCH")
PY

DDP_TEST_BACKEND=gloo KERAS_TORCH_DEVICE=cuda:0 python3 -m pytest -q -p no:cacheprovider \
    tests/test_distributed.py 2>&1 | tee "$out/pytest_gloo_cuda.log" | tail -25
