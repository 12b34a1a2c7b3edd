#!/usr/bin/env bash
# The GPU checks, as one prepared run for a lent CUDA machine (CI has no GPU):
# the CUDA tests (tests/test_gpu.py, tests/test_precision.py), then benchmarks/gpu_bench.py.
# Results go to $OUT (default /tmp/streamclf-gpu-check). Extra arguments go to gpu_bench.py,
# e.g. `scripts/gpu_check.sh --device cpu --quick` to check the script itself on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/streamclf-gpu-check}
export OUT PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$OUT/nvidia-smi.txt"
# -W default: report warnings from this machine's library versions without failing on them.
"$PY" -m pytest -q -W default -p no:cacheprovider tests/test_gpu.py tests/test_precision.py 2>&1 | tee "$OUT/pytest.log"
tests_rc=${PIPESTATUS[0]}
"$PY" benchmarks/gpu_bench.py "$@" 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu_check: tests rc=$tests_rc, benchmark rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
