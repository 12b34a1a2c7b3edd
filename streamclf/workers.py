"""Long-lived worker threads that cannot die silently.

A thread whose loop raises ends, and Python only prints the traceback to stderr: the daemon
looks alive while a stage has stopped for good (nothing is published again, say). Every
long-lived streamclf thread therefore runs its loop through ``Workers.thread``: an exception
is logged with the thread's name and recorded, and the health check (``service/health.py``)
turns any recorded failure into "unhealthy": ``/healthz`` answers 503 with the reason and
the systemd watchdog pings stop, so systemd restarts the service. A loop that handles its
own per-item errors (a bad message, a bad snapshot) keeps running; only what escapes it is a
failure.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerFailure:
    """A worker thread that ended by an exception: its name, the error, when (monotonic seconds)."""

    name: str
    error: str
    at: float


class Workers:
    """The worker threads of one daemon, and those that died; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[WorkerFailure] = []

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        """A daemon thread named ``name`` that runs ``target`` guarded; the caller starts it."""
        return threading.Thread(target=self._run, args=(target, name), name=name, daemon=True)

    def _run(self, target: Callable[[], None], name: str) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - whatever ends the thread must be seen
            log.exception("thread %s failed and has stopped: %s: %s", name, type(exc).__name__, exc)
            with self._lock:
                self._failures.append(WorkerFailure(name, f"{type(exc).__name__}: {exc}", time.monotonic()))

    def failures(self) -> tuple[WorkerFailure, ...]:
        """Threads that died, oldest first."""
        with self._lock:
            return tuple(self._failures)
