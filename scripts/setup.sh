#!/usr/bin/env bash
# Set up streamclf in ./.venv on a fresh machine: the CPU build of PyTorch first (a bare
# "torch" requirement would pull a multi-GB CUDA build), then the package itself.
# Usage: scripts/setup.sh [--test]   (--test adds what the test suite needs)
# On a GPU machine, install the CUDA torch you want into .venv before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "torch==2.13.0"
fi
extra="[local]"  # the model in this process (README: which extra gives which)
[ "${1:-}" = "--test" ] && extra="[test]"
"${PIP[@]}" install -e ".${extra}"
[ -f samples/driveway.mp4 ] || .venv/bin/python scripts/make_sample_video.py
