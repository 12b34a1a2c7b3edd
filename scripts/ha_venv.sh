#!/usr/bin/env bash
# Make .venv-ha/: Home Assistant's own package in a venv of its own (it pins many packages that
# streamclf's .venv must not get), for tests/test_homeassistant_schemas.py, which validates every
# discovery payload streamclf sends with Home Assistant's MQTT platform schemas.
# 2024.3 is the newest Home Assistant that installs on Python 3.11 (later ones need 3.12+).
# Only what importing the MQTT platforms and rendering templates needs is installed, as wheels, at
# the versions Home Assistant pins (its package_constraints.txt): its full dependency set sends pip's
# resolver backtracking through unpinned Bluetooth packages for many minutes.
# pip then reports the Home Assistant requirements left out as "dependency conflicts": expected.
# Usage: scripts/ha_venv.sh   (does nothing when .venv-ha already works)
set -euo pipefail
cd "$(dirname "$0")/.."
HA_VERSION=${HA_VERSION:-2024.3.3}
PYTHON=${HA_PYTHON:-/usr/bin/python3}
PY=.venv-ha/bin/python
PLATFORMS="import homeassistant.components.mqtt.binary_sensor, homeassistant.components.mqtt.sensor, \
homeassistant.components.mqtt.image, homeassistant.components.mqtt.event, homeassistant.components.mqtt.number, \
homeassistant.components.mqtt.switch, homeassistant.helpers.template"
if [ -x $PY ] && $PY -c "$PLATFORMS; import homeassistant.const as c, sys; sys.exit(c.__version__ != '$HA_VERSION')" 2>/dev/null; then
  exit 0
fi
rm -rf .venv-ha
"$PYTHON" -m venv .venv-ha
PIP=($PY -m pip --disable-pip-version-check -q install --only-binary :all:)
"${PIP[@]}" --no-deps "homeassistant==$HA_VERSION"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# paho-mqtt: its pinned 1.6.1 has no wheel; the schemas do not depend on its version.
grep -v -i '^paho-mqtt' "$($PY -c 'import homeassistant, os; print(os.path.dirname(homeassistant.__file__))')/package_constraints.txt" \
  > "$constraints"
"${PIP[@]}" -c "$constraints" voluptuous voluptuous-serialize Jinja2 PyYAML attrs awesomeversion aiohttp \
  aiohttp-cors aiohttp-fast-url-dispatcher aiohttp-zlib-ng yarl orjson python-slugify ciso8601 typing-extensions \
  astral requests "paho-mqtt<3" ulid-transform lru-dict atomicwrites-homeassistant httpx PyJWT cryptography \
  certifi async-interrupt ifaddr bcrypt packaging
$PY -c "$PLATFORMS"
