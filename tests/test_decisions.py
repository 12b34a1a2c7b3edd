"""The alerting state machine, as a specification: score sequences in, ON/OFF and events out.

No model and no broker: classifications are built by hand and time comes from the test.
"""

from __future__ import annotations

import pytest

from streamclf.config import Config, LabelConfig, parse_config
from streamclf.decisions import AlertRules, Decider, Decisions, EventType
from streamclf.entities import Classification


def make_config(label: dict | None = None, camera: dict | None = None, interval_s: float = 1000.0, **extra) -> Config:
    return Config.model_validate({
        "labels": {"person": {"threshold": 0.5, "min_consecutive": 1, "off_delay_s": 0, **(label or {})},
                   "car": {"threshold": 0.5, "min_consecutive": 1, "off_delay_s": 0},
                   "nothing": {"background": True}},
        "cameras": {"cam": {"source": "v.mp4", **(camera or {})}, "other": {"source": "w.mp4"}},
        "events": {"event_update_interval_s": interval_s},
        **extra,
    })


def frame(score: float, camera: str = "cam", zone: str | None = None, index: int = 0) -> Classification:
    """A classification where ``person`` has ``score``; ``car`` stays at 0 (never ON)."""
    return Classification(camera, index, 0.0, 0.0, {"person": score, "car": 0.0, "nothing": 1.0 - score}, zone=zone)


def trace(decider: Decider, steps: list[tuple[float, float]]) -> list[str]:
    """One string per step: the event types it produced, joined by '+', '' for none.

    Checks on the way that every state change matches its event (start <-> ON, end <-> OFF).
    """
    out = []
    for t, score in steps:
        d = decider.observe(frame(score), now=t)
        types = [e.type.value for e in d.events]
        assert [c.payload for c in d.state_changes] == [
            {"start": "ON", "end": "OFF"}[x] for x in types if x != "update"
        ]
        out.append("+".join(types))
    return out


# Columns: rules for 'person', event_update_interval_s, (time s, score) steps, expected events per step.
CASES = {
    "plain threshold: on at the first frame above, off at the first below": (
        {}, 1000, [(0, 0.4), (1, 0.6), (2, 0.7), (3, 0.4), (4, 0.3)],
        ["", "start", "", "end", ""],
    ),
    "exactly at threshold counts as above": (
        {}, 1000, [(0, 0.5), (1, 0.49)],
        ["start", "end"],
    ),
    "flicker without off delay: every crossing is an event": (
        {}, 1000, [(0, 0.51), (1, 0.49), (2, 0.51), (3, 0.49)],
        ["start", "end", "start", "end"],
    ),
    "flicker with off delay stays ON: one frame back above resets the timer": (
        {"off_delay_s": 3}, 1000, [(0, 0.6), (1, 0.4), (2, 0.6), (3, 0.4), (5, 0.4), (6, 0.4), (7, 0.4)],
        ["start", "", "", "", "", "end", ""],
    ),
    "off delay counts time below, not frames": (
        {"off_delay_s": 2}, 1000, [(0, 0.6), (10, 0.1), (11.9, 0.1), (12, 0.1)],
        ["start", "", "", "end"],
    ),
    "min_consecutive: short bursts never turn ON": (
        {"min_consecutive": 3}, 1000, [(0, 0.6), (1, 0.6), (2, 0.4), (3, 0.6), (4, 0.6), (5, 0.6), (6, 0.7)],
        ["", "", "", "", "", "start", ""],
    ),
    "min_consecutive counts again after an end": (
        {"min_consecutive": 2}, 1000, [(0, 0.6), (1, 0.6), (2, 0.1), (3, 0.6), (4, 0.6)],
        ["", "start", "end", "", "start"],
    ),
    "cooldown: no second start within cooldown_s of the first": (
        {"cooldown_s": 10}, 1000, [(0, 0.6), (1, 0.4), (2, 0.6), (9.9, 0.6), (10, 0.6), (11, 0.1)],
        ["start", "end", "", "", "start", "end"],
    ),
    "cooldown and min_consecutive together: the count carries through the cooldown": (
        {"cooldown_s": 5, "min_consecutive": 2}, 1000, [(0, 0.6), (1, 0.6), (2, 0.1), (3, 0.6), (4, 0.6), (6, 0.6)],
        ["", "start", "end", "", "", "start"],
    ),
    "updates at most every event_update_interval_s while ON": (
        {}, 2, [(0, 0.6), (1, 0.7), (2, 0.8), (2.5, 0.9), (4, 0.6), (5, 0.1), (7, 0.1)],
        ["start", "", "update", "", "update", "end", ""],
    ),
    "updates go on during the off delay; the end replaces a due update": (
        {"off_delay_s": 3}, 1, [(0, 0.6), (1, 0.4), (2, 0.4), (4, 0.4)],
        ["start", "update", "update", "end"],
    ),
    "update interval 0: an update for every frame while ON": (
        {}, 0, [(0, 0.6), (0.1, 0.6), (0.2, 0.6), (0.3, 0.1)],
        ["start", "update", "update", "end"],
    ),
    "threshold 0: always ON after the first frame": (
        {"threshold": 0.0}, 1000, [(0, 0.0), (1, 0.0)],
        ["start", ""],
    ),
}


@pytest.mark.parametrize("rules, interval_s, steps, expected", list(CASES.values()), ids=list(CASES))
def test_state_machine(rules, interval_s, steps, expected):
    assert len(steps) == len(expected)
    decider = Decider(make_config(rules, interval_s=interval_s))
    assert trace(decider, steps) == expected


def test_event_messages_share_an_id_and_carry_scores_and_times():
    ids = iter(["ev-1", "ev-2"])
    decider = Decider(make_config({"off_delay_s": 1}, interval_s=1), new_event_id=lambda now: next(ids))
    events = []
    for t, score in [(10, 0.6), (11, 0.9), (12, 0.7), (12.5, 0.2), (13.5, 0.3)]:
        events += decider.observe(frame(score), now=t).events
    assert [e.payload() for e in events] == [
        {"type": "start", "id": "ev-1", "camera": "cam", "zone": None, "label": "person", "score": 0.6,
         "top_score": 0.6, "start_time": 10, "end_time": None},
        {"type": "update", "id": "ev-1", "camera": "cam", "zone": None, "label": "person", "score": 0.9,
         "top_score": 0.9, "start_time": 10, "end_time": None},
        {"type": "update", "id": "ev-1", "camera": "cam", "zone": None, "label": "person", "score": 0.7,
         "top_score": 0.9, "start_time": 10, "end_time": None},
        {"type": "end", "id": "ev-1", "camera": "cam", "zone": None, "label": "person", "score": 0.3,
         "top_score": 0.9, "start_time": 10, "end_time": 13.5},
    ]
    assert events[0].classification is not None and events[0].classification.scores["person"] == 0.6


def test_the_injected_clock_is_used_when_no_time_is_given():
    now = [100.0]
    decider = Decider(make_config({"off_delay_s": 5}), clock=lambda: now[0])
    assert decider.observe(frame(0.9)).events[0].start_time == 100.0
    now[0] = 101.0
    assert not decider.observe(frame(0.1)).events  # below since 101
    now[0] = 106.0
    (end,) = decider.observe(frame(0.1)).events
    assert end.type is EventType.END and end.end_time == 106.0


def test_zones_cameras_and_labels_have_separate_states():
    decider = Decider(make_config(camera={"zones": {"porch": {"box": [0, 0, 0.5, 1]},
                                                         "gate": {"box": [0.5, 0, 1, 1]}}}))
    porch = decider.observe(frame(0.9, zone="porch"), now=0)
    assert [(c.camera, c.zone, c.label, c.payload) for c in porch.state_changes] == [("cam", "porch", "person", "ON")]
    assert porch.events[0].zone == "porch"
    assert not decider.observe(frame(0.1, zone="gate"), now=1)
    other = decider.observe(frame(0.9, camera="other"), now=2)
    assert [(c.camera, c.zone, c.payload) for c in other.state_changes] == [("other", None, "ON")]
    assert sorted(decider.active(), key=str) == [("cam", "porch", "person"), ("other", None, "person")]


def test_initial_states_are_off_for_every_tracked_label_and_zone_never_background():
    decider = Decider(make_config(camera={"zones": {"porch": {"box": [0, 0, 0.5, 1]}}}), clock=lambda: 7.0)
    assert sorted((c.camera, c.zone, c.label, c.payload, c.time) for c in decider.initial_states()) == [
        ("cam", "porch", "car", "OFF", 7.0), ("cam", "porch", "person", "OFF", 7.0),
        ("other", None, "car", "OFF", 7.0), ("other", None, "person", "OFF", 7.0),
    ]


def test_detections_are_every_frame_at_or_above_the_effective_threshold():
    decider = Decider(make_config({"min_consecutive": 5}, camera={"label_overrides": {"person": {"threshold": 0.8}}}))
    assert [d.label for d in decider.observe(frame(0.79), now=0).detections] == []
    d = decider.observe(frame(0.8), now=1)
    assert [(x.label, x.score) for x in d.detections] == [("person", 0.8)] and not d.events  # not yet ON
    assert [x.label for x in decider.observe(frame(0.9, camera="other"), now=2).detections] == ["person"]


def test_per_camera_overrides_replace_only_the_fields_they_set():
    cfg = make_config({"threshold": 0.4, "min_consecutive": 3, "off_delay_s": 2, "cooldown_s": 9},
                      camera={"label_overrides": {"person": {"threshold": 0.7, "cooldown_s": 0}}})
    decider = Decider(cfg)
    assert decider.rules("cam", "person") == AlertRules(0.7, 3, 2, 0)
    assert decider.rules("other", "person") == AlertRules(0.4, 3, 2, 9)
    assert decider.rules("cam", "nothing") is None  # background: no rules, no state


@pytest.mark.parametrize(
    "camera, label, threshold, expected_exception",
    [
        ("cam", "person", 0.9, None),
        ("cam", "person", 0, None),
        ("cam", "person", 1.5, ValueError),
        ("cam", "person", -0.1, ValueError),
        ("cam", "person", "0.5", ValueError),
        ("cam", "person", True, ValueError),
        ("cam", "nothing", 0.5, KeyError),  # background
        ("cam", "dog", 0.5, KeyError),
        ("nope", "person", 0.5, KeyError),
    ],
)
def test_set_threshold_validates_and_changes_nothing_on_error(camera, label, threshold, expected_exception):
    decider = Decider(make_config())
    if expected_exception is None:
        decider.set_threshold(camera, label, threshold)
        assert decider.threshold(camera, label) == threshold
        assert decider.threshold("other", label) == 0.5  # per camera
    else:
        with pytest.raises(expected_exception):
            decider.set_threshold(camera, label, threshold)
        assert decider.threshold("cam", "person") == 0.5


def test_runtime_threshold_applies_from_the_next_frame():
    decider = Decider(make_config())
    assert decider.observe(frame(0.6), now=0).events[0].type is EventType.START
    decider.set_threshold("cam", "person", 0.8)
    assert decider.observe(frame(0.6), now=1).events[0].type is EventType.END
    assert not decider.observe(frame(0.7), now=2)


def test_disabling_a_camera_ends_its_events_and_ignores_its_frames():
    decider = Decider(make_config())
    decider.observe(frame(0.9), now=0)
    decider.observe(frame(0.9, camera="other"), now=0)
    off = decider.set_camera_enabled("cam", False, now=5)
    assert [(c.camera, c.payload) for c in off.state_changes] == [("cam", "OFF")]
    assert [(e.type, e.end_time, e.classification) for e in off.events] == [(EventType.END, 5, None)]
    assert decider.observe(frame(0.9), now=6) == Decisions()  # frames in flight change nothing
    assert not decider.camera_enabled("cam") and decider.camera_enabled("other")
    assert decider.set_camera_enabled("cam", True, now=7) == Decisions()
    assert decider.observe(frame(0.9), now=8).events[0].type is EventType.START
    with pytest.raises(KeyError):
        decider.set_camera_enabled("nope", False)


def test_update_labels_ends_removed_labels_and_starts_new_ones_off():
    decider = Decider(make_config())
    decider.observe(frame(0.9), now=0)
    decider.set_threshold("cam", "car", 0.3)
    new_labels = {"car": LabelConfig(threshold=0.6, min_consecutive=1, off_delay_s=0),
                  "dog": LabelConfig(min_consecutive=1, off_delay_s=0),
                  "nothing": LabelConfig(background=True)}
    d = decider.update_labels(new_labels, now=3)
    assert [(e.type, e.label, e.end_time) for e in d.events] == [(EventType.END, "person", 3)]
    assert sorted((c.camera, c.label, c.payload) for c in d.state_changes) == [
        ("cam", "dog", "OFF"), ("cam", "person", "OFF"), ("other", "dog", "OFF")]
    assert decider.threshold("cam", "car") == 0.3  # the runtime override survives
    assert decider.threshold("other", "car") == 0.6
    scores = {"car": 0.1, "dog": 0.8, "nothing": 0.1}
    assert [e.label for e in decider.observe(Classification("cam", 1, 0, 0, scores), now=4).events] == ["dog"]


def test_finish_ends_every_open_event_once():
    decider = Decider(make_config(camera={"zones": {"porch": {"box": [0, 0, 1, 1]}}}))
    decider.observe(frame(0.9, zone="porch"), now=0)
    decider.observe(frame(0.9, camera="other"), now=1)
    done = decider.finish(now=9)
    assert sorted((e.camera, e.zone, e.type.value, e.end_time) for e in done.events) == [
        ("cam", "porch", "end", 9), ("other", None, "end", 9)]
    assert decider.finish(now=10) == Decisions() and decider.active() == []


@pytest.mark.parametrize(
    "kwargs, expected_exception",
    [
        ({"threshold": 0.5}, None),
        ({"threshold": 1.1}, ValueError),
        ({"threshold": 0.5, "min_consecutive": 0}, ValueError),
        ({"threshold": 0.5, "off_delay_s": -1}, ValueError),
        ({"threshold": 0.5, "cooldown_s": -1}, ValueError),
    ],
)
def test_alert_rules_validate(kwargs, expected_exception):
    if expected_exception is None:
        AlertRules(**kwargs)
    else:
        with pytest.raises(expected_exception):
            AlertRules(**kwargs)


def test_frame_time_mode_decides_on_media_time_and_never_runs_backwards():
    """The daemon's mode: a non-realtime file decides as if it had played, whatever the processing speed."""
    cfg = parse_config(
        "labels: {car: {threshold: 0.5, min_consecutive: 1, off_delay_s: 2.0}, bg: {background: true}}\n"
        "cameras: {cam: {source: x.mp4}}\n",
        env={},
    )
    d = Decider(cfg, clock=lambda: 1e9, use_frame_time=True)

    def at(t: float, score: float):
        return d.observe(Classification("cam", int(t * 10), t, 0.0, {"car": score, "bg": 1 - score}))

    assert [e.type.value for e in at(1.0, 0.9).events] == ["start"]
    assert not at(1.5, 0.1).events and not at(3.4, 0.1).events  # below for 1.9 s of media time: still ON
    end = at(3.5, 0.1).events
    assert [(e.type.value, e.start_time, e.end_time) for e in end] == [("end", 1.0, 3.5)]
    # The file starts again (frame_time back to 0): its timeline continues instead of jumping back.
    start = at(0.0, 0.9).events
    assert [(e.type.value, e.start_time) for e in start] == [("start", 3.5)]
    assert [(e.end_time) for e in d.finish().events] == [3.5]  # shutdown ends it at the camera's last frame
