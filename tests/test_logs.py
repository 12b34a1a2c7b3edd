"""Log lines: credentials redacted, JSON lines for shippers with the camera as a field."""

from __future__ import annotations

import json
import logging

import pytest

from streamclf.logs import JsonFormatter, RedactingFilter


def _format(msg: str, *args, **extra) -> dict:
    record = logging.LogRecord("streamclf.capture", logging.WARNING, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(record, k, v)
    RedactingFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


@pytest.mark.parametrize(
    "msg, args, extra, camera",
    [
        ("camera %s: cannot open %s", ("front_door", "rtsp://admin:pw@cam/1"), {}, "front_door"),
        ("camera %s: started", ("cam-2",), {"camera": "cam-2"}, "cam-2"),
        ("MQTT connected to %s", ("broker",), {}, None),
    ],
)
def test_json_lines_carry_the_camera_and_never_a_password(msg, args, extra, camera):
    body = _format(msg, *args, **extra)
    assert body.get("camera") == camera
    assert body["level"] == "warning" and body["logger"] == "streamclf.capture"
    assert "pw" not in json.dumps(body)
