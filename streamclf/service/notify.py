"""sd_notify(3) without a dependency: one datagram per state change to ``$NOTIFY_SOCKET``.

The protocol is newline-separated ``KEY=VALUE`` pairs sent as a single datagram on a unix
socket (gunicorn and Synapse do the same in a few lines). A socket name starting with ``@``
is in the abstract namespace. With ``NOTIFY_SOCKET`` unset (not run by systemd, or a unit
that is not ``Type=notify``) every call does nothing, so the daemon behaves the same
everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd; a no-op without ``NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = address
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]  # abstract namespace
        elif address.startswith("/"):
            self._address = address
        elif address:
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket name; not notifying systemd",
                        address)
        self.watchdog_interval_s = _watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *pairs: str) -> bool:
        """Send ``KEY=VALUE`` pairs in one datagram; True if sent. Failures are logged once, never raised."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(pairs).encode(), self._address)
            return True
        except OSError as exc:
            if not self._failed_once:  # systemd gone or socket full: say so once, not every ping
                self._failed_once = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets newer systemd match the reload to its request; older ones ignore it.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval_s(env) -> float | None:
    """Seconds between watchdog pings: half of ``WATCHDOG_USEC`` (as sd_watchdog_enabled(3) advises),
    or None when systemd expects none (unset, or ``WATCHDOG_PID`` names another process)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; not pinging the watchdog", usec)
        return None
    return value / 2e6 if value > 0 else None
