"""Log lines: credentials redacted, JSON lines for shippers with the camera as a field."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from streamclf.logs import JsonFormatter, RedactingFilter, redact


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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cannot open rtsp://admin:pw@cam/1", "cannot open rtsp://***@cam/1"),
        ("rtsp://viewer@cam.local:554/live", "rtsp://***@cam.local:554/live"),
        # An unencoded '@', '/' or space in the password: the user info runs to the last '@'.
        ("open rtsp://admin:Sec@ret99@192.168.1.5:554/s1 failed", "open rtsp://***@192.168.1.5:554/s1 failed"),
        ("rtsp://admin:pa/ss:w0rd@cam/1 (timeout)", "rtsp://***@cam/1 (timeout)"),
        ("rtsp://admin:my secret pw@cam/1", "rtsp://***@cam/1"),
        ("rtsps://u:p@cam/1", "rtsps://***@cam/1"),
        # Two URLs on a line are redacted one by one; the text between stays.
        ("rtsp://a:b1@h1/x and http://c:d2@h2/y", "rtsp://***@h1/x and http://***@h2/y"),
        ("rtsp://h1/x then rtsp://c:d2@h2/y", "rtsp://h1/x then rtsp://***@h2/y"),
        # Credentials in the query string, as many IP cameras take them.
        ("http://cam/snapshot.cgi?user=admin&pwd=hunter2&chn=1", "http://cam/snapshot.cgi?user=***&pwd=***&chn=1"),
        ("rtsp://cam/live?username=admin&password=hunter2", "rtsp://cam/live?username=***&password=***"),
        ("http://cam/v.cgi?usr=admin&PWD=hunter2", "http://cam/v.cgi?usr=***&PWD=***"),
        ("http://cam/v.cgi?pass=hunter2&x=1", "http://cam/v.cgi?pass=***&x=1"),
        ("http://cam/v.cgi?passwd=hunter2#frag", "http://cam/v.cgi?passwd=***#frag"),
        ("http://cam/v.cgi?token=abc123 (HTTP 401)", "http://cam/v.cgi?token=*** (HTTP 401)"),
        ("http://cam/v.cgi?auth=YWRtaW46aHVudGVyMg==", "http://cam/v.cgi?auth=***"),
        ("http://cam/v.cgi?access_token=abc&api_key=def", "http://cam/v.cgi?access_token=***&api_key=***"),
        ("http://cam/v.cgi?loginuse=admin&loginpas=hunter2", "http://cam/v.cgi?loginuse=***&loginpas=***"),
        ("rtsp://cam/user=admin_password=hunter2_channel=1", "rtsp://cam/user=***"),
        # Nothing secret: unchanged.
        ("camera front: cannot open rtsp://cam.local/stream (timeout)",
         "camera front: cannot open rtsp://cam.local/stream (timeout)"),
        ("http://cam/v.cgi?channel=1&subtype=0", "http://cam/v.cgi?channel=1&subtype=0"),
        ("MQTT: connected to broker.local:1883", "MQTT: connected to broker.local:1883"),
    ],
    ids=["user-pass", "user-only", "at-in-password", "slash-in-password", "space-in-password", "rtsps",
         "two-urls", "plain-then-credentials", "query-user-pwd", "query-username-password", "query-usr-upper-pwd",
         "query-pass", "query-passwd-fragment", "query-token", "query-auth", "query-access-token-api-key",
         "query-loginuse-loginpas", "path-user-password", "no-credentials", "query-no-credentials", "no-url"],
)
def test_redact_hides_every_form_of_stream_credentials(text, expected):
    assert redact(text) == expected


def test_redacting_filter_covers_arguments_and_exception_text():
    try:
        raise OSError("cannot open rtsp://admin:Sec@ret99@cam/1")
    except OSError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("streamclf", logging.ERROR, __file__, 1, "camera %s: %s", ("c", "http://c/x?pwd=hunter2"),
                               exc_info)
    RedactingFilter().filter(record)
    assert record.getMessage() == "camera c: http://c/x?pwd=***"
    assert "ret99" not in record.exc_text and "rtsp://***@cam/1" in record.exc_text
