"""Logging set-up: plain or JSON lines, with stream credentials redacted everywhere.

Camera URLs carry passwords (``rtsp://user:pass@host``). Rather than trusting every
call site to remember, a filter on the root handler rewrites each record's final
message, so a URL that reaches a log line through an exception text is redacted too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_CAMERA_LINE = re.compile(r"camera ([A-Za-z0-9_][A-Za-z0-9_-]*): ")
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def redact(text: str) -> str:
    """Replace ``user:pass@`` (or ``user@``) in every URL of ``text`` with ``***@``."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


class RedactingFilter(logging.Filter):
    """Redacts credentials from the formatted message and exception text of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("camera", "label"):
            if hasattr(record, key):
                body[key] = getattr(record, key)
        if "camera" not in body:
            # Camera lines read "camera <name>: ..." everywhere; give shippers the name as a field too.
            m = _CAMERA_LINE.match(body["message"])
            if m:
                body["camera"] = m.group(1)
        if record.exc_text:
            body["exception"] = record.exc_text
        return json.dumps(body)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once: stderr, redacted, text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that chat at INFO about every HTTP call or weight shard.
    for noisy in ("httpx", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
