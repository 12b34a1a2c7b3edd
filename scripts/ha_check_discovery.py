"""Validate streamclf's Home Assistant discovery payloads with Home Assistant's own MQTT schemas.

Runs in .venv-ha (scripts/ha_venv.sh), not in streamclf's venv. Reads JSON from stdin:
``{"payloads": {topic: payload_text}, "samples": {state_topic: {sample_name: message_text}}}`` and
writes JSON to stdout: ``{"version", "validated", "errors": {topic: message}, "dropped": {topic: [keys]},
"rendered": {topic: {sample_name: output}}, "binary_sensor_device_classes": [...]}``.

Every payload goes through its platform's ``DISCOVERY_SCHEMA``, as discovery does. That schema drops
keys it does not know instead of failing, so those are reported as ``dropped``. Every
``value_template`` is then rendered with each sample message of its ``state_topic``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import tempfile


def validate(topic: str, payload: dict) -> tuple[dict | None, str | None]:
    """(validated config, None) or (None, error) for one discovery payload."""
    component = topic.split("/")[-4]
    module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
    try:
        return module.DISCOVERY_SCHEMA(payload), None
    except Exception as exc:  # voluptuous.Invalid and friends: report it, go on with the others
        return None, f"{type(exc).__name__}: {exc}"


async def check(request: dict, config_dir: str) -> dict:
    from homeassistant.components.binary_sensor import BinarySensorDeviceClass
    from homeassistant.const import __version__
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.template import Template

    hass = HomeAssistant(config_dir)
    out = {"version": __version__, "validated": 0, "errors": {}, "dropped": {}, "rendered": {},
           "binary_sensor_device_classes": sorted(c.value for c in BinarySensorDeviceClass)}
    for topic, text in request["payloads"].items():
        payload = json.loads(text)
        config, error = validate(topic, payload)
        if error:
            out["errors"][topic] = error
            continue
        out["validated"] += 1
        dropped = sorted(set(payload) - set(config))
        if dropped:
            out["dropped"][topic] = dropped
        samples = request.get("samples", {}).get(payload.get("state_topic", ""), {})
        if payload.get("value_template") and samples:
            template = Template(payload["value_template"], hass)
            out["rendered"][topic] = {
                name: str(template.async_render_with_possible_json_value(message, ""))
                for name, message in samples.items()
            }
    return out


def main() -> None:
    request = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as config_dir:
        json.dump(asyncio.run(check(request, config_dir)), sys.stdout)


if __name__ == "__main__":
    main()
