"""BoundedQueue: what each overflow policy keeps, what it counts, and when it warns."""

from __future__ import annotations

import logging
import threading

import pytest

from streamclf.bounded_queue import BoundedQueue, OverflowPolicy

log = logging.getLogger("tests.bounded_queue")
WARNING = "queue full (%(maxsize)d items, %(context)s); %(dropped)d dropped so far"


def _queue(maxsize: int, policy: OverflowPolicy, **kw) -> BoundedQueue[int]:
    return BoundedQueue(maxsize, policy, logger=log, warning=WARNING, **kw)


@pytest.mark.parametrize("policy, puts, kept, returned, dropped", [
    (OverflowPolicy.DROP_OLDEST, [1, 2], [1, 2], [None, None], 0),
    (OverflowPolicy.DROP_OLDEST, [1, 2, 3, 4], [3, 4], [None, None, 1, 2], 2),
    (OverflowPolicy.REJECT_NEWEST, [1, 2], [1, 2], [None, None], 0),
    (OverflowPolicy.REJECT_NEWEST, [1, 2, 3, 4], [1, 2], [None, None, 3, 4], 2),
])
def test_a_full_queue_applies_its_policy_and_counts(policy, puts, kept, returned, dropped):
    q = _queue(2, policy)
    assert [q.put(item) for item in puts] == returned
    assert q.items() == kept and len(q) == len(kept)
    assert q.dropped == dropped


def test_above_its_bound_a_queue_makes_room_by_one_item_per_put():
    """After put_front or a smaller maxsize: it drains to the bound, no put drops a batch at once."""
    q = _queue(4, OverflowPolicy.DROP_OLDEST)
    for i in range(4):
        q.put(i)
    q.maxsize = 2
    assert q.put(4) == 0
    assert q.items() == [1, 2, 3, 4] and q.dropped == 1


@pytest.mark.parametrize("maxsize", [0, -1])
def test_a_bound_below_one_is_refused(maxsize):
    with pytest.raises(ValueError, match="at least one item"):
        _queue(maxsize, OverflowPolicy.DROP_OLDEST)


def test_put_front_goes_first_and_ignores_the_bound():
    q = _queue(1, OverflowPolicy.REJECT_NEWEST)
    q.put(1)
    q.put_front(0)
    assert q.items() == [0, 1] and q.dropped == 0
    assert q.popleft() == 0 and q.get(0) == 1


def test_warnings_are_throttled_but_a_new_context_always_warns(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("streamclf.bounded_queue.time.monotonic", lambda: now[0])
    q = _queue(1, OverflowPolicy.DROP_OLDEST, warn_interval_s=10)
    caplog.set_level(logging.WARNING, logger=log.name)
    for context, t in [("connected", 100), ("connected", 101), ("disconnected", 102), ("disconnected", 105),
                       ("disconnected", 113)]:
        now[0] = t
        q.put(0, context=context)
        q.put(1, context=context)
    assert [r.getMessage() for r in caplog.records] == [
        "queue full (1 items, connected); 1 dropped so far",
        "queue full (1 items, disconnected); 4 dropped so far",
        "queue full (1 items, disconnected); 8 dropped so far",
    ]


def test_without_a_warning_the_owner_reports_drops(caplog):
    q: BoundedQueue[int] = BoundedQueue(1, OverflowPolicy.REJECT_NEWEST, logger=log)
    q.put(1)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        assert q.put(2) == 2
    assert caplog.records == [] and q.dropped == 1


def test_get_waits_for_an_item_and_returns_none_on_timeout_or_once_closed_and_empty():
    q = _queue(4, OverflowPolicy.DROP_OLDEST)
    assert q.get(0.01) is None
    got = []
    reader = threading.Thread(target=lambda: got.extend(iter(q.get, None)))
    reader.start()
    q.put(1)
    q.put(2)
    q.close()
    reader.join(5)
    assert not reader.is_alive() and got == [1, 2]
    assert q.clear() == 0


def test_the_mqtt_outage_queue_drops_the_oldest_and_counts_per_topic(caplog):
    """MqttClient's queue before it ever connects: the bound, the counters and the warning it logs."""
    from streamclf.config import MqttConfig
    from streamclf.mqtt_client import MqttClient

    publisher = MqttClient(MqttConfig(host="127.0.0.1", port=1, max_queued_messages=10))
    with caplog.at_level(logging.WARNING, logger="streamclf.mqtt_client"):
        for i in range(15):
            publisher.publish(f"t/{i % 3}", {"i": i})
    assert publisher.queued == 10 and publisher.dropped_overflow == 5
    assert dict(publisher.dropped_by_topic) == {"t/0": 2, "t/1": 2, "t/2": 1}  # messages 0..4 went
    assert [r.getMessage() for r in caplog.records] == [
        "MQTT queue full (10 messages, broker disconnected); dropping the oldest, 1 dropped so far"]


def test_keyed_items_wait_once_per_key_with_the_newest_value_and_are_never_dropped():
    q: BoundedQueue[str] = BoundedQueue(2, OverflowPolicy.DROP_OLDEST, logger=logging.getLogger("test"))
    q.put("state=ON", key="state")
    q.put("d1")
    q.put("d2")
    assert q.put("d3") == "d1"  # the bound counts items without a key only
    q.put("state=OFF", key="state")  # replaces the queued state, keeping its place
    q.put_front("other=ON", key="other")  # state to send first
    q.put_front("state=stale", key="state")  # a key already queued keeps its newer value
    assert len(q) == 4 and q.dropped == 1
    assert [q.popleft() for _ in range(4)] == ["other=ON", "state=OFF", "d2", "d3"]
