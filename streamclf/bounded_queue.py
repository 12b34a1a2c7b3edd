"""A bounded FIFO whose overflow is a named policy, with a drop counter and a warning that cannot flood the log.

The daemon's hand-offs between threads (MQTT outage queue, snapshot queue, control commands)
must never block the thread that produces, and must never grow without bound; what happens
to the item that does not fit is a decision each owner makes by naming a policy:

- ``DROP_OLDEST``: make room by dropping the oldest item. The newest is the one worth
  keeping (a detection, a snapshot a person wants to see).
- ``REJECT_NEWEST``: refuse the new item and leave the queue as it is. The owner answers
  the item's sender (a control command gets an error reply).

One lock guards the queue. An owner whose waits depend on the queue *and* on state of its
own (the MQTT sender waits for items and a connection) passes its own ``Condition`` in, so
both are read under the same lock and one notification wakes its waiters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class OverflowPolicy(str, Enum):
    DROP_OLDEST = "drop_oldest"
    REJECT_NEWEST = "reject_newest"


class BoundedQueue(Generic[T]):
    """A thread-safe FIFO of at most ``maxsize`` items; ``put`` never blocks.

    ``warning``, when given, is logged on ``logger`` at WARNING level when an item is dropped,
    as a %-format with the named fields ``maxsize``, ``dropped`` (the count so far) and
    ``context`` (the caller's, e.g. the broker's state). It is logged at most once every
    ``warn_interval_s`` seconds, but always when ``context`` differs from the last warning's,
    so that a burst in one situation cannot hide a different one seconds later. Without
    ``warning`` the owner reports drops itself.
    """

    def __init__(self, maxsize: int, policy: OverflowPolicy, *, logger: logging.Logger, warning: str | None = None,
                 warn_interval_s: float = 10.0, cond: threading.Condition | None = None):
        self.policy = policy
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = cond if cond is not None else threading.Condition()
        self._closed = False
        self._log = logger
        self._warning = warning
        self._warn_interval_s = warn_interval_s
        self._last_warning: tuple[float, str] | None = None  # (time.monotonic(), context) of the last warning
        self.dropped = 0  # items dropped or refused because the queue was full, since creation

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"a bounded queue holds at least one item, got maxsize {value}")
        self._maxsize = value

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def items(self) -> list[T]:
        """The queued items, oldest first (a copy)."""
        with self._cond:
            return list(self._items)

    def put(self, item: T, context: str = "") -> T | None:
        """Queue ``item`` at the back; returns the item the policy dropped to do so, None when it fit.

        When the queue is full, ``DROP_OLDEST`` drops (and returns) the oldest item, one per
        put, and ``REJECT_NEWEST`` returns ``item`` itself. ``context`` goes into the warning
        (see the class docstring).
        """
        with self._cond:
            if len(self._items) < self._maxsize:
                dropped = None
            elif self.policy is OverflowPolicy.REJECT_NEWEST:
                self._count_drop(context)
                return item
            else:
                dropped = self._items.popleft()
                self._count_drop(context)
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def put_front(self, item: T) -> None:
        """Queue ``item`` ahead of everything, outside the bound: an item taken out and given back,
        state that must go first, or a stop sentinel. Never drops anything; until the queue drains
        below its bound again, each ``put`` makes room by one item as usual."""
        with self._cond:
            self._items.appendleft(item)
            self._cond.notify_all()

    def get(self, timeout_s: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout_s`` seconds (None: for ever) for one.

        None when the wait timed out, or when the queue is closed and empty.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout_s) or not self._items:
                return None
            return self._items.popleft()

    def popleft(self) -> T:
        """The oldest item without waiting (for owners that wait on their own condition); IndexError if empty."""
        with self._cond:
            return self._items.popleft()

    def clear(self) -> int:
        """Remove every item (not counted as drops); returns how many there were."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n

    def close(self) -> None:
        """From now on ``get`` returns None instead of waiting once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _count_drop(self, context: str) -> None:
        self.dropped += 1
        if self._warning is None:
            return
        now = time.monotonic()
        last = self._last_warning
        if last is None or now - last[0] > self._warn_interval_s or context != last[1]:
            self._last_warning = (now, context)
            self._log.warning(self._warning, {"maxsize": self._maxsize, "dropped": self.dropped, "context": context})
