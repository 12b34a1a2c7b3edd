"""Rate limits for what a flood of bad input would otherwise multiply: log lines and error replies.

A journal drops lines past its rate limit (journald: 10,000 per 30 s by default), and the
lines it drops are whichever come next, important or not. So a cause that can repeat at the
sender's pace (a control flood, a broker that rejects every message) is logged a few times
per window, and what was held back is summed up in one line when the window ends.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass


@dataclass
class _Window:
    started: float  # monotonic seconds
    passed: int = 0
    suppressed: int = 0


class RateLimit:
    """At most ``limit`` events per ``per_s`` seconds for each key; the rest are counted; thread-safe."""

    def __init__(self, limit: int, per_s: float):
        self.limit = limit
        self.per_s = per_s
        self._windows: dict[str, _Window] = {}
        self._ended: dict[str, tuple[int, float]] = {}  # key -> (held back, seconds) of ended windows, untaken
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        """True if one more event of ``key`` may pass at ``now`` (monotonic seconds)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            w = self._windows.get(key)
            if w is None or now - w.started >= self.per_s:
                if w is not None:
                    self._end(key, w, now)
                w = self._windows[key] = _Window(now)
            if w.passed < self.limit:
                w.passed += 1
                return True
            w.suppressed += 1
            return False

    def take_suppressed(self, now: float | None = None) -> dict[str, tuple[int, float]]:
        """Events held back in windows that have ended: key -> (count, seconds they span); each reported once."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for key, w in list(self._windows.items()):
                if now - w.started >= self.per_s:
                    self._end(key, w, now)
                    del self._windows[key]
            out, self._ended = self._ended, {}
        return out

    def _end(self, key: str, w: _Window, now: float) -> None:
        if w.suppressed:
            n, span_s = self._ended.get(key, (0, 0.0))
            self._ended[key] = (n + w.suppressed, span_s + min(now - w.started, self.per_s))


class LogThrottle:
    """A logger's lines for a few repeatable causes, ``limit`` per ``per_s`` seconds each.

    ``log(key, level, msg, *args)`` logs or counts; ``flush()`` (call it now and then, e.g.
    when idle) writes one WARNING per cause whose window ended with lines held back:
    ``"<key>: N more line(s) suppressed in the last S s"``.
    """

    def __init__(self, logger: logging.Logger, limit: int = 10, per_s: float = 10.0):
        self._log = logger
        self._limit = RateLimit(limit, per_s)

    def log(self, key: str, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` is over its limit; True if logged."""
        self.flush()
        if self._limit.allow(key):
            self._log.log(level, msg, *args)
            return True
        return False

    def flush(self) -> None:
        """Sum up each cause whose window has ended with lines held back."""
        for key, (n, span_s) in self._limit.take_suppressed().items():
            self._log.warning("%s: %d more line(s) like it suppressed in the last %.0f s", key, n, span_s)
