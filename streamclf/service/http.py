"""streamclf's one HTTP server: ``/metrics``, ``/healthz`` and the live page, in daemon threads.

Each connection gets a thread (so a long-lived live-update stream never blocks a scrape), but
their number is bounded: past ``max_connections`` a new connection is answered ``503`` at once
and closed, never queued behind the others. Every socket read and write times out after
``idle_timeout_s`` seconds, so a client that sends half a request, or stops reading a stream,
loses its connection and its thread instead of holding them for ever.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         b"Retry-After: 5\r\nContent-Length: 38\r\n\r\ntoo many connections; try again later\n")


@dataclass(frozen=True)
class HttpLimits:
    """``max_connections``: connections served at once; ``idle_timeout_s``: seconds a socket may
    stay silent (no byte read or written) before it is closed."""

    max_connections: int = 32
    idle_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or not 0 < self.idle_timeout_s < float("inf"):
            raise ValueError(f"HttpLimits: need max_connections >= 1 and a finite idle_timeout_s > 0, got {self}")


class _BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow client must never hold up shutdown
    block_on_close = False
    limits = HttpLimits()

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self.refused = 0  # connections answered 503 because every slot was taken

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is free again
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request) -> None:
        try:
            request.settimeout(1.0)  # answering a refused client must not block the accepting thread
            request.sendall(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that went away or fell silent is routine, not a traceback on stderr.
        log.debug("http: connection from %s ended with an error", client_address[0], exc_info=True)


class _BoundedWSGIServer6(_BoundedWSGIServer):
    address_family = socket.AF_INET6  # host "::" or another IPv6 address


class _QuietHandler(WSGIRequestHandler):
    timeout = None  # set per server: StreamRequestHandler applies it to the socket

    def log_message(self, format, *args):  # one access-log line per scrape would drown the events that matter
        pass

    def get_stderr(self):
        # wsgiref prints a traceback there when a client goes away mid-response (a closed page, a
        # dropped slow reader): routine, so to the debug log, not the journal.
        return _DebugLog()


class _DebugLog:
    def write(self, text: str) -> None:
        if text.strip():
            log.debug("http: %s", text.rstrip())

    def flush(self) -> None:
        pass


class HttpServer:
    """A WSGI ``app`` served on ``host:port`` within ``limits``, in a daemon thread; port 0 picks a free one."""

    def __init__(self, app: WsgiApp, host: str, port: int, limits: HttpLimits = HttpLimits(), name: str = "http"):
        base = _BoundedWSGIServer6 if ":" in host else _BoundedWSGIServer
        server_class = type("_Server", (base,), {"limits": limits})
        handler_class = type("_Handler", (_QuietHandler,), {"timeout": limits.idle_timeout_s})
        self.host = host
        self._server: _BoundedWSGIServer = make_server(host, port, _guarded(app), server_class=server_class,
                                                       handler_class=handler_class)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def refused_connections(self) -> int:
        """Connections answered 503 since start because ``max_connections`` were open."""
        return self._server.refused

    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close the listening socket; open streams end at their next write."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(1.0)


def _guarded(app: WsgiApp) -> WsgiApp:
    def guarded(environ, start_response):
        try:
            return app(environ, start_response)
        except Exception:  # through our logging (redacted, JSON when asked), not wsgiref's raw traceback
            log.exception("http server: %s failed", environ.get("PATH_INFO"))
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"internal error; see the streamclf log\n"]
    return guarded


def not_found(start_response, hint: str) -> list[bytes]:
    """A plain-text 404 whose body says where to look instead."""
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [f"not found: {hint}\n".encode()]
