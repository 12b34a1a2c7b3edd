"""Honest states: an offline camera's open events end after off_delay_s, with a reason (the decider side)."""

from __future__ import annotations

import pytest

from streamclf.decisions import Decider, Decisions, EventType
from tests.test_decisions import frame, make_config


@pytest.mark.parametrize(
    "off_delay_s, silent_for_s, ends",
    [
        (5.0, 4.9, False),  # not yet: the label's own off delay has not passed without frames
        (5.0, 5.0, True),
        (0.0, 0.0, True),
        (5.0, 1800.0, True),  # a long outage ends it too, at last frame + off_delay_s
    ],
)
def test_a_silent_camera_ends_its_events_after_off_delay_with_a_reason(off_delay_s, silent_for_s, ends):
    decider = Decider(make_config(label={"off_delay_s": off_delay_s}))
    assert decider.observe(frame(0.9), now=100.0).events[0].type is EventType.START
    d = decider.end_silent_camera("cam", silent_for_s)
    if not ends:
        assert d == Decisions() and decider.active() == [("cam", None, "person")]
        return
    assert [(c.label, c.payload, c.time) for c in d.state_changes] == [("person", "OFF", 100.0 + off_delay_s)]
    (end,) = d.events
    assert (end.type, end.label, end.end_time, end.reason) == (EventType.END, "person", 100.0 + off_delay_s,
                                                              "camera_offline")
    assert end.payload()["reason"] == "camera_offline" and end.payload()["end_time"] == 100.0 + off_delay_s
    assert decider.active() == []
    assert decider.end_silent_camera("cam", silent_for_s + 60) == Decisions()  # nothing ends twice


def test_only_the_silent_camera_ends_and_it_starts_again_when_frames_return():
    decider = Decider(make_config(camera={"zones": {"porch": {"box": [0, 0, 1, 1]}}}))
    decider.observe(frame(0.9, zone="porch"), now=0.0)
    decider.observe(frame(0.9, camera="other"), now=0.0)
    d = decider.end_silent_camera("cam", 10.0, reason="stream_stalled")
    assert [(e.camera, e.zone, e.reason) for e in d.events] == [("cam", "porch", "stream_stalled")]
    assert decider.active() == [("other", None, "person")]
    assert decider.end_silent_camera("never_seen", 10.0) == Decisions()
    back = decider.observe(frame(0.9, zone="porch"), now=20.0)
    assert [(e.type, e.zone) for e in back.events] == [(EventType.START, "porch")]


def test_ends_by_score_carry_no_reason():
    decider = Decider(make_config())
    decider.observe(frame(0.9), now=0.0)
    end = decider.observe(frame(0.1), now=1.0).events[0]
    assert end.type is EventType.END and end.reason is None and "reason" not in end.payload()
