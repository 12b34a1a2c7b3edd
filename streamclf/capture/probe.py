"""A plain-socket check that a stream server answers, before OpenCV is asked to open it.

OpenCV holds a process-wide mutex for the whole of an FFmpeg ``open()`` (see ``ffmpeg``), so a
source that hangs while opening would hold up every other camera's (re)connect for up to
``open_timeout_s``. A closed port, a port that accepts and says nothing, or a server that is
not RTSP/HTTP fails here instead, in the camera's own thread, without touching OpenCV.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from streamclf.logs import redact


def probe_stream(url: str, timeout_s: float) -> str | None:
    """Check that an rtsp:// or http:// server answers like one, within ``timeout_s`` seconds.

    Returns None when it does (or for schemes it cannot check), else why not, without
    credentials. Runs before OpenCV's open(), which would hold a process-wide mutex while a
    silent server makes it wait.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("rtsp", "http") or not parts.hostname:
        return None
    try:
        port = parts.port or (554 if scheme == "rtsp" else 80)
    except ValueError:
        return f"invalid port in {redact(url)}"
    host = parts.hostname
    where = f"{host}:{port}"
    if scheme == "rtsp":
        target = f"{scheme}://{where}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: streamclf\r\n\r\n"
        expected, kind = b"RTSP/", "RTSP"
    else:
        request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {where}\r\nUser-Agent: streamclf\r\n\r\n"
        expected, kind = b"HTTP/", "HTTP"
    reply = _exchange(host, port, request.encode(), timeout_s)
    if isinstance(reply, str):
        return reply
    if not reply:
        return f"{where} closed the connection without answering"
    if not reply.startswith(expected):
        return f"{where} is not an {kind} server (it answered {reply[:24]!r})"
    return None


def _exchange(host: str, port: int, request: bytes, timeout_s: float) -> bytes | str:
    """Send ``request`` and read the first bytes of the reply within ``timeout_s`` seconds in all; or why not."""
    where = f"{host}:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except socket.timeout:
        return f"no TCP connection to {where} within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect to {where}: {exc.strerror or exc}"
    with sock:
        try:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(request)
            return sock.recv(64)
        except socket.timeout:
            return f"{where} accepted the connection but sent nothing within {timeout_s:g} s"
        except OSError as exc:
            return f"{where} failed while answering: {exc.strerror or exc}"
