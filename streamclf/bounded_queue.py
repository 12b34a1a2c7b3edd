"""A bounded FIFO whose overflow is a named policy, with a drop counter and a warning that cannot flood the log.

The daemon's hand-offs between threads (MQTT outage queue, snapshot queue, control commands)
must never block the thread that produces, and must never grow without bound; what happens
to the item that does not fit is a decision each owner makes by naming a policy:

- ``DROP_OLDEST``: make room by dropping the oldest item. The newest is the one worth
  keeping (a detection, a snapshot a person wants to see).
- ``REJECT_NEWEST``: refuse the new item and leave the queue as it is. The owner answers
  the item's sender (a control command gets an error reply).

An item put with a ``key`` is *state*: only its newest value matters (a retained MQTT topic).
It waits once per key, in the place of its key's first unsent put, with the newest value; the
bound and the overflow policy apply to the items without a key only, so state is never what an
overflow drops. Keyed items are bounded by the number of keys their owner uses.

One lock guards the queue. An owner whose waits depend on the queue *and* on state of its
own (the MQTT sender waits for items and a connection) passes its own ``Condition`` in, so
both are read under the same lock and one notification wakes its waiters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from enum import Enum
from typing import Generic, Hashable, TypeVar

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
        # Each item with its sequence number: the two are merged in put order by popleft().
        self._items: deque[tuple[int, T]] = deque()
        self._keyed: OrderedDict[Hashable, tuple[int, T]] = OrderedDict()
        self._next_seq = 0  # put() numbers from here up
        self._front_seq = 0  # put_front() numbers from here down
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
            return len(self._items) + len(self._keyed)

    def __bool__(self) -> bool:
        return len(self) > 0

    def items(self) -> list[T]:
        """The queued items, oldest first (a copy)."""
        with self._cond:
            return [item for _, item in sorted([*self._items, *self._keyed.values()], key=lambda e: e[0])]

    def put(self, item: T, context: str = "", key: Hashable | None = None) -> T | None:
        """Queue ``item`` at the back; returns the item the policy dropped to do so, None when it fit.

        When the queue is full, ``DROP_OLDEST`` drops (and returns) the oldest item, one per
        put, and ``REJECT_NEWEST`` returns ``item`` itself. ``context`` goes into the warning
        (see the class docstring). With a ``key``, ``item`` replaces the queued item of that key
        (keeping its place) or joins at the back, and nothing is ever dropped for it.
        """
        with self._cond:
            if key is not None:
                old = self._keyed.get(key)
                self._keyed[key] = (old[0] if old else self._take_seq(), item)
                self._cond.notify_all()
                return None
            if len(self._items) < self._maxsize:
                dropped = None
            elif self.policy is OverflowPolicy.REJECT_NEWEST:
                self._count_drop(context)
                return item
            else:
                dropped = self._items.popleft()[1]
                self._count_drop(context)
            self._items.append((self._take_seq(), item))
            self._cond.notify_all()
            return dropped

    def put_front(self, item: T, key: Hashable | None = None) -> None:
        """Queue ``item`` ahead of everything, outside the bound: an item taken out and given back,
        state that must go first, or a stop sentinel. Never drops anything; until the queue drains
        below its bound again, each ``put`` makes room by one item as usual. With a ``key`` that
        is already queued, the queued (newer) item stays and ``item`` is not added."""
        with self._cond:
            self._front_seq -= 1
            if key is None:
                self._items.appendleft((self._front_seq, item))
            elif key not in self._keyed:
                self._keyed[key] = (self._front_seq, item)
                self._keyed.move_to_end(key, last=False)
            self._cond.notify_all()

    def _take_seq(self) -> int:
        self._next_seq += 1
        return self._next_seq

    def get(self, timeout_s: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout_s`` seconds (None: for ever) for one.

        None when the wait timed out, or when the queue is closed and empty.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self) or self._closed, timeout_s) or not len(self):
                return None
            return self.popleft()

    def popleft(self) -> T:
        """The oldest item without waiting (for owners that wait on their own condition); IndexError if empty."""
        with self._cond:
            if self._keyed:
                key, (seq, item) = next(iter(self._keyed.items()))
                if not self._items or seq < self._items[0][0]:
                    del self._keyed[key]
                    return item
            return self._items.popleft()[1]

    def clear(self) -> int:
        """Remove every item (not counted as drops); returns how many there were."""
        with self._cond:
            n = len(self)
            self._items.clear()
            self._keyed.clear()
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
