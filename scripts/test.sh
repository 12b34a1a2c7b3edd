#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run them.
# System packages: mosquitto (the tests start their own broker on a free port) and
# GStreamer's RTSP server with python3-gi (the tests serve real RTSP), chromium (the live page's
# browser test drives it headless over its DevTools protocol). Then .venv via
# scripts/setup.sh --test. Then ruff and mypy (config in pyproject.toml), the function-length
# check (scripts/function_lengths.py), then pytest;
# any of them failing fails the run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto mosquitto-clients)
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" 2>/dev/null \
  || need+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
scripts/setup.sh --test
# Home Assistant in .venv-ha for the discovery schema test; without it that test is skipped, not failed.
scripts/ha_venv.sh || echo "warning: scripts/ha_venv.sh failed; tests/test_homeassistant_schemas.py will be skipped" >&2
# Lint and types first: a finding fails the run before the (slow) tests start.
if ! .venv/bin/ruff check streamclf tests benchmarks scripts; then
  echo "ruff found problems (above): fix them, or mark a justified exception with '# noqa: CODE' and why" >&2
  exit 1
fi
if ! .venv/bin/mypy; then
  echo "mypy found type errors (above) in streamclf/: fix them, or mark a justified exception with '# type: ignore[code]' and why" >&2
  exit 1
fi
if ! .venv/bin/python scripts/function_lengths.py; then
  echo "functions in streamclf/ over 60 lines (above): extract named steps" >&2
  exit 1
fi
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
