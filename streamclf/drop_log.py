"""Drop counts in the log: frames dropped before the model, and MQTT messages lost to a full outage queue.

Logged when they changed, at most once per interval, and once more at shutdown, so a drop
never vanishes silently and a steady state does not repeat itself.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from streamclf.batching import Batcher
from streamclf.mqtt_client import MqttClient

log = logging.getLogger(__name__)


class DropLog:
    """Logs the batcher's and the publisher's drop counts when they change."""

    def __init__(self, batcher: Batcher, publisher: MqttClient, max_queued_messages: Callable[[], int],
                 interval_s: float = 60.0):
        self._batcher = batcher
        self._publisher = publisher
        self._max_queued_messages = max_queued_messages  # read when logging: a reload may change it
        self.interval_s = interval_s
        self._logged: tuple[dict, int] = ({}, 0)
        self._logged_at = time.monotonic()

    def tick(self) -> None:
        """Log if ``interval_s`` seconds passed since the last time and the counts changed."""
        if time.monotonic() - self._logged_at >= self.interval_s:
            self.log()
            self._logged_at = time.monotonic()

    def log(self, force: bool = False) -> None:
        """Log the drop counts if they changed since the last time (always with ``force`` when any)."""
        now = (self._batcher.drop_counts(), self._publisher.dropped_overflow)
        if now == self._logged and not (force and (now[0] or now[1])):
            return
        self._logged, self._logged_at = now, time.monotonic()
        for camera, reasons in sorted(now[0].items()):
            counts = ", ".join(f"{reason}={n}" for reason, n in sorted(reasons.items()))
            log.info("camera %s: frames dropped since start: %s", camera, counts)
        if now[1]:
            by_topic = ", ".join(f"{t}={n}" for t, n in self._publisher.dropped_by_topic.most_common(10))
            log.warning("MQTT: %d message(s) dropped since start because the outage queue was full "
                        "(mqtt.max_queued_messages=%d): %s", now[1], self._max_queued_messages(), by_topic)
