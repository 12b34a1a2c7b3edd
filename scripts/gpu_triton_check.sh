#!/usr/bin/env bash
# streamclf on Triton on a lent CUDA machine, as one prepared run (under 5 minutes on an H100/H200):
# one `streamclf serve` on the GPU (fp16, CUDA graphs), then 1 node process x 32 streams against
# 4 node processes x 8 streams into it (benchmarks/gpu_triton.py: frames/s of each and the ratio).
# Needs the serve and triton extras in the interpreter's environment: pip install -e '.[serve,triton]'.
# Results go to $OUT (default /tmp/streamclf-gpu-triton-check). Extra arguments go to gpu_triton.py,
# e.g. `bash scripts/gpu_triton_check.sh --device cpu --quick` checks the script itself on a CPU, and
# `bash scripts/gpu_triton_check.sh --dry-run` only checks that everything it needs is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/streamclf-gpu-triton-check}
export OUT PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$OUT/nvidia-smi.txt"
# What the run needs, checked first: a missing PyTriton would otherwise show only as a server that never starts.
"$PY" - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as m
for name in ("torch", "transformers", "nvidia-pytriton", "tritonclient", "opencv-python-headless"):
    try:
        print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name} not installed" + ("" if name.startswith("opencv") else "  <- pip install -e '.[serve,triton]'"))
import torch
print("CUDA:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
import pytriton, tritonclient.grpc  # noqa: F401  (fails here, not minutes later, when they are missing)
PY
deps_rc=${PIPESTATUS[0]}
if [ "${1:-}" = "--dry-run" ]; then
  "$PY" benchmarks/gpu_triton.py --help >/dev/null && echo "gpu_triton_check: dry run, dependencies rc=$deps_rc"
  exit "$deps_rc"
fi
[ "$deps_rc" -eq 0 ] || { echo "gpu_triton_check: dependencies missing (see above)"; exit "$deps_rc"; }
timeout "${TIMEOUT_S:-290}" "$PY" benchmarks/gpu_triton.py "$@" 2>&1 | tee "$OUT/gpu_triton.log"
bench_rc=${PIPESTATUS[0]}
[ "$bench_rc" -eq 124 ] && echo "gpu_triton_check: the benchmark ran past ${TIMEOUT_S:-290} s and was stopped"
echo "gpu_triton_check: benchmark rc=$bench_rc; results in $OUT/gpu_triton.json"
exit "$bench_rc"
