"""Logging set-up: plain or JSON lines, with stream credentials redacted everywhere.

Camera URLs carry passwords (``rtsp://user:pass@host``, ``http://cam/snap.cgi?user=u&pwd=p``).
Rather than trusting every call site to remember, a filter on the root handler rewrites each
record's final message, so a URL that reaches a log line through an exception text is redacted too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_CAMERA_LINE = re.compile(r"camera ([A-Za-z0-9_][A-Za-z0-9_-]*): ")
# User info runs from "scheme://" to the LAST '@' before the line ends or the next URL starts: a
# password may hold an unencoded '@', '/' or space, and cutting at the first of those would print
# the rest of it. The cost is over-redaction of a credential-less URL followed by an '@' on the
# same line, which is the safe side. Bounded so a long line costs linear time, not quadratic.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?:(?!://)[^\n]){1,512}@")
# Query or path parameters that carry credentials (?user=admin&pwd=..., Foscam's usr/pwd, loginuse/loginpas).
_SECRET_PARAMS = re.compile(
    r"(?P<key>(?<![A-Za-z0-9])(?:user(?:name)?|usr|login(?:use|pas)?|pwd|pass(?:wd|word)?|secret|"
    r"token|access_token|auth|authorization|api_?key|credentials?)=)[^&#\s'\"]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with every URL's user info (``user:pass@``) replaced by ``***@`` and credential
    parameters (``pwd=...``, ``token=...``) by ``***``."""
    return _SECRET_PARAMS.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", text))


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
