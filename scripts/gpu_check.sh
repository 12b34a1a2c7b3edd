#!/usr/bin/env bash
# The GPU checks, as one prepared run for a lent CUDA machine (CI has no GPU):
# the CUDA tests (tests/test_gpu.py, tests/test_precision.py), the daemon's end-to-end tests with the
# model on CUDA (where mosquitto is found), then benchmarks/gpu_bench.py.
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
# `streamclf run` as a subprocess on CUDA with a real broker: the end-to-end tests again, on the GPU.
# A machine without apt may bring mosquitto and its libraries in .mosq/bin (wrappers) and .mosq/lib
# (ignored by git; carried to the device). Made on a Debian machine with mosquitto installed: copy
# /usr/sbin/mosquitto and /usr/bin/mosquitto_passwd to .mosq/lib/NAME.real, with every library `ldd`
# lists for them except glibc's (libc, libm, libresolv, ld-linux); .mosq/bin/NAME is a shell wrapper
# that runs .mosq/lib/NAME.real with LD_LIBRARY_PATH=.mosq/lib, so only the broker sees those libraries.
[ -d .mosq/bin ] && PATH="$PWD/.mosq/bin:$PATH"
if command -v mosquitto >/dev/null 2>&1; then
  STREAMCLF_TEST_DEVICE=cuda "$PY" -m pytest -q -W default -p no:cacheprovider tests/test_end_to_end.py \
    tests/test_control_end_to_end.py tests/test_service.py 2>&1 | tee "$OUT/pytest-daemon-cuda.log"
  daemon_rc=${PIPESTATUS[0]}
else
  echo "gpu_check: no mosquitto here; the daemon's end-to-end tests on CUDA are left out" | tee "$OUT/pytest-daemon-cuda.log"
  daemon_rc=0
fi
"$PY" benchmarks/gpu_bench.py "$@" 2>&1 | tee "$OUT/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu_check: tests rc=$tests_rc, daemon tests on CUDA rc=$daemon_rc, benchmark rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$daemon_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
