"""The live page's HTTP routes (WSGI), read-only, served by ``streamclf/service/http.py``.

- ``/`` and ``/static/<file>``: the page, plain HTML, CSS and JS from this package (no CDN).
- ``/api/status``: the header and a card per camera, as JSON (``LiveView.status``).
- ``/api/events?limit=N``: the last N events (at most 100), newest first.
- ``/api/events/<id>/snapshot.jpg``: an event's snapshot; ``/api/cameras/<camera>/latest.jpg``:
  the camera's latest classified frame.
- ``/api/stream``: Server-Sent Events: ``status`` (every ``status_interval_s``), ``scores``
  (every ``scores_interval_s``) and ``event`` (each start, end or new top score), at most
  ``max_streams`` at once. Each stream is produced by its own connection's thread from
  ``LiveView``'s snapshots, so nothing is queued for a client: one that stops reading blocks
  only its own socket, until the server's idle timeout drops it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from importlib import resources
from typing import Callable, Generator, Iterator
from urllib.parse import parse_qs, unquote

from streamclf.web.live import MAX_EVENTS, LiveView

_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
_CAMERA_JPEG = re.compile(r"^/api/cameras/([^/]+)/latest\.jpg$")
_EVENT_JPEG = re.compile(r"^/api/events/([A-Za-z0-9_.:-]+)/snapshot\.jpg$")


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of ``streamclf/web/static``, read once: name -> (body, content type)."""
    files = {}
    for entry in resources.files("streamclf.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


class WebApp:
    """The page and its API over one ``LiveView``; ``close()`` ends every open stream."""

    scores_interval_s = 0.5
    status_interval_s = 2.0

    def __init__(self, live: LiveView, max_streams: int):
        self._live = live
        self._files = _static_files()
        self._streams = threading.BoundedSemaphore(max_streams)
        self._closed = threading.Event()

    def handles(self, path: str) -> bool:
        """True for the paths this app serves."""
        return path == "/" or path.startswith(("/static/", "/api/"))

    def close(self) -> None:
        self._closed.set()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"read-only: control streamclf over MQTT\n"]
        path = environ.get("PATH_INFO", "/")
        if path == "/" or path.startswith("/static/"):
            return self._static("index.html" if path == "/" else path[len("/static/"):], start_response)
        if path == "/api/status":
            return _json(start_response, self._live.status())
        if path == "/api/events":
            return _json(start_response, {"events": self._live.events(_limit(environ))})
        if path == "/api/stream":
            return self._stream(start_response)
        if m := _CAMERA_JPEG.match(path):
            return _jpeg(start_response, self._live.latest_jpeg(unquote(m.group(1))), "no frame from this camera yet")
        if m := _EVENT_JPEG.match(path):
            return _jpeg(start_response, self._live.event_snapshot(m.group(1)), "no snapshot for this event")
        return _text(start_response, "404 Not Found", "not found: try / or /api/status")

    def _static(self, name: str, start_response):
        found = self._files.get(name)
        if found is None:
            return _text(start_response, "404 Not Found", "no such file")
        body, content_type = found
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])
        return [body]

    def _stream(self, start_response):
        if not self._streams.acquire(blocking=False):
            return _text(start_response, "503 Service Unavailable", "too many live pages open; close one and retry",
                         [("Retry-After", "10")])
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"),
                                  ("X-Accel-Buffering", "no")])  # nginx: pass each event on at once
        return _Stream(self._events(), self._streams.release)

    def _events(self) -> Generator[bytes, None, None]:
        live = self._live
        cursor = live.event_seq
        yield b"retry: 2000\n\n" + _sse("status", live.status()) + _sse("scores", live.scores())
        last_status = time.monotonic()
        # Scores go out on every round, so the stream is never silent long enough for a proxy or
        # the idle timeout to close it.
        while not self._closed.wait(self.scores_interval_s):
            chunk = _sse("scores", live.scores())
            cursor, changed = live.events_since(cursor)
            for event in changed:
                chunk += _sse("event", event)
            if time.monotonic() - last_status >= self.status_interval_s:
                chunk += _sse("status", live.status())
                last_status = time.monotonic()
            yield chunk


class _Stream:
    """An SSE body whose ``close`` (called by the server however the response ends) frees its slot."""

    def __init__(self, chunks: Generator[bytes, None, None], release: Callable[[], None]):
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()
        if self._release is not None:
            self._release()
            self._release = None


def _limit(environ) -> int:
    values = parse_qs(environ.get("QUERY_STRING", "")).get("limit", [])
    try:
        return max(0, min(MAX_EVENTS, int(values[0]))) if values else MAX_EVENTS
    except ValueError:
        return MAX_EVENTS


def _sse(kind: str, body: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def _json(start_response, body: object):
    data = json.dumps(body, separators=(",", ":")).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                              ("Cache-Control", "no-store")])
    return [data]


def _jpeg(start_response, data: bytes | None, missing: str):
    if data is None:
        return _text(start_response, "404 Not Found", missing)
    start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(data))),
                              ("Cache-Control", "no-store")])
    return [data]


def _text(start_response, status: str, message: str, extra: list[tuple[str, str]] | None = None):
    data = (message + "\n").encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data))), *(extra or [])])
    return [data]
