"""Decisions: which scores become detections, ON/OFF states and start/update/end events.

Kept apart from classification and from MQTT so that the alerting rules can be tested with
plain score sequences and a clock, no model and no broker. CLIP's zero-shot scores hover
and drift, so a bare threshold flickers; each (camera, zone, label) therefore runs a small
state machine:

- OFF -> ON after ``min_consecutive`` classified frames in a row at or above ``threshold``,
  and not sooner than ``cooldown_s`` seconds after the previous start (a parked car that
  flickers does not alert again every few seconds);
- ON -> OFF once the score has stayed below ``threshold`` for ``off_delay_s`` seconds; a
  single frame back above resets that timer (flicker around the threshold keeps it ON);
- while ON, an ``update`` event at most every ``event_update_interval_s`` seconds.

All times are seconds. With ``use_frame_time`` (what the daemon uses) they are the frames'
own ``frame_time``: capture wall-clock time (epoch seconds) for live streams, media time for
files, so a ``realtime: false`` file run decides exactly as if the file had played in real
time, and the same file always gives the same events. Otherwise they come from the injected
``clock`` (default ``time.time``). Events carry them as ``start_time``/``end_time``. Every public method takes a lock,
so runtime control (another thread) can change thresholds, labels or enabled cameras
between two batches; a change applies from the next classification on.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Mapping

from streamclf.config import Config, LabelConfig
from streamclf.entities import Classification, Detection


@dataclass(frozen=True)
class AlertRules:
    """The effective rules of one label on one camera. Score in 0..1, times in seconds."""

    threshold: float
    min_consecutive: int = 1
    off_delay_s: float = 0.0
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {self.threshold!r}")
        if self.min_consecutive < 1:
            raise ValueError(f"min_consecutive must be at least 1, got {self.min_consecutive!r}")
        if self.off_delay_s < 0 or self.cooldown_s < 0:
            raise ValueError(
                f"off_delay_s and cooldown_s must not be negative, got {self.off_delay_s}, {self.cooldown_s}")


@dataclass(frozen=True)
class StateChange:
    """A label of a camera (and zone) turned ON or OFF at ``time`` (clock seconds)."""

    camera: str
    zone: str | None
    label: str
    on: bool
    time: float

    @property
    def payload(self) -> str:
        return "ON" if self.on else "OFF"


class EventType(str, Enum):
    START = "start"
    UPDATE = "update"
    END = "end"


@dataclass(frozen=True)
class Event:
    """One message of an event's life: ``start``, then ``update``s, then ``end``, all with the same ``id``.

    ``score`` is the score of the frame that caused this message, ``top_score`` the highest
    score since the start (both 0..1). ``end_time`` is None until the ``end``. ``classification``
    is what triggered the message (None for an end forced by shutdown or a disabled camera);
    snapshots are taken from its image.
    """

    type: EventType
    id: str
    camera: str
    zone: str | None
    label: str
    score: float
    top_score: float
    start_time: float
    end_time: float | None
    classification: Classification | None = field(default=None, repr=False, compare=False)
    reason: str | None = None  # why an ``end`` came other than by the score, e.g. ``camera_offline``

    def payload(self) -> dict:
        """The JSON body published on ``<prefix>/<camera>/event``; ``reason`` only on ends that have one."""
        body = {
            "type": self.type.value,
            "id": self.id,
            "camera": self.camera,
            "zone": self.zone,
            "label": self.label,
            "score": round(self.score, 6),
            "top_score": round(self.top_score, 6),
            "start_time": round(self.start_time, 3),
            "end_time": None if self.end_time is None else round(self.end_time, 3),
        }
        if self.reason is not None:
            body["reason"] = self.reason
        return body


@dataclass(frozen=True)
class Decisions:
    """Everything one call decided, in order; publish all of it."""

    detections: tuple[Detection, ...] = ()
    state_changes: tuple[StateChange, ...] = ()
    events: tuple[Event, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.detections or self.state_changes or self.events)


@dataclass
class _LabelState:
    """Mutable state of one (camera, zone, label); owned by the decider, never handed out."""

    on: bool = False
    consecutive: int = 0  # frames in a row at or above threshold while OFF
    below_since: float | None = None  # while ON: when the score first fell below threshold
    last_start: float | None = None  # for the cooldown
    event_id: str = ""
    start_time: float = 0.0
    top_score: float = 0.0
    last_score: float = 0.0
    last_event_time: float = 0.0  # last start or update message


Key = tuple[str, "str | None", str]  # (camera, zone, label)


def _new_event_id(now: float) -> str:
    # Sortable by start time, unique without coordination (Frigate uses the same shape).
    return f"{now:.6f}-{uuid.uuid4().hex[:6]}"


class Decider:
    """Per (camera, zone, label) state machines over classifications; see the module docstring.

    Public API (all thread-safe):

    - ``observe(classification, now=None) -> Decisions``: the per-frame step.
    - ``initial_states() -> list[StateChange]``: OFF for every tracked label, to publish at start.
    - ``set_threshold(camera, label, threshold)``, ``threshold(camera, label)``: runtime threshold.
    - ``set_camera_enabled(camera, enabled, now=None) -> Decisions``: disabling ends its events.
    - ``update_config(cfg, now=None) -> Decisions`` / ``update_labels(labels, now=None)``: new labels;
      states of removed labels end (OFF), new ones start OFF.
    - ``end_silent_camera(camera, silent_for_s, reason) -> Decisions``: a camera without frames (offline)
      ends its events once their ``off_delay_s`` has passed.
    - ``finish(now=None) -> Decisions``: end every open event (shutdown).
    """

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.time,
        new_event_id: Callable[[float], str] = _new_event_id,
        use_frame_time: bool = False,
    ):
        self._clock = clock
        self._use_frame_time = use_frame_time
        self._camera_time: dict[str, float] = {}  # frame time of each camera's newest classification
        self._camera_offset: dict[str, float] = {}  # added to a camera's frame times after its source restarted
        self._new_event_id = new_event_id
        self._lock = threading.RLock()
        self._threshold_overrides: dict[tuple[str, str], float] = {}  # runtime, per (camera, label)
        self._enabled = {name: cam.enabled for name, cam in cfg.cameras.items()}
        self._states: dict[Key, _LabelState] = {}
        self._rules: dict[tuple[str, str], AlertRules] = {}
        self._zones: dict[str, list[str | None]] = {}
        self.cfg = cfg
        self._update_interval_s = cfg.events.event_update_interval_s
        self._apply_config(cfg)

    # -- configuration ------------------------------------------------------------

    def _apply_config(self, cfg: Config) -> None:
        self.cfg = cfg
        self._update_interval_s = cfg.events.event_update_interval_s
        rules: dict[tuple[str, str], AlertRules] = {}
        for cam_name, cam in cfg.cameras.items():
            for label in cfg.labels_for(cam_name):
                lc = cfg.labels.get(label)
                if lc is None or lc.background:
                    continue
                o = cam.label_overrides.get(label)
                rules[(cam_name, label)] = AlertRules(
                    threshold=self._threshold_overrides.get(
                        (cam_name, label), lc.threshold if o is None or o.threshold is None else o.threshold
                    ),
                    min_consecutive=lc.min_consecutive if o is None or o.min_consecutive is None else o.min_consecutive,
                    off_delay_s=lc.off_delay_s if o is None or o.off_delay_s is None else o.off_delay_s,
                    cooldown_s=lc.cooldown_s if o is None or o.cooldown_s is None else o.cooldown_s,
                )
        self._rules = rules
        self._zones = {name: list(cam.zones) or [None] for name, cam in cfg.cameras.items()}
        for name in cfg.cameras:
            self._enabled.setdefault(name, cfg.cameras[name].enabled)

    def _tracked_keys(self) -> list[Key]:
        return [(cam, zone, label) for (cam, label) in self._rules for zone in self._zones.get(cam, [None])]

    def rules(self, camera: str, label: str) -> AlertRules | None:
        """The effective rules of ``label`` on ``camera``; None for background or unknown labels."""
        with self._lock:
            return self._rules.get((camera, label))

    def threshold(self, camera: str, label: str) -> float:
        """The effective threshold (0..1) of ``label`` on ``camera``; KeyError if it is not tracked there."""
        with self._lock:
            try:
                return self._rules[(camera, label)].threshold
            except KeyError:
                raise KeyError(f"label {label!r} is not a non-background label of camera {camera!r}") from None

    def set_threshold(self, camera: str, label: str, threshold: float) -> None:
        """Change one label's threshold (0..1) on one camera, from the next classification on.

        Raises KeyError for an unknown camera/label, ValueError for a threshold outside 0..1;
        nothing changes then. The override outlives ``update_config`` while the label exists.
        """
        with self._lock:
            current = self._rules.get((camera, label))
            if current is None:
                raise KeyError(f"label {label!r} is not a non-background label of camera {camera!r}")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be a number within 0..1, got {threshold!r}")
            self._rules[(camera, label)] = AlertRules(
                float(threshold), current.min_consecutive, current.off_delay_s, current.cooldown_s
            )
            self._threshold_overrides[(camera, label)] = float(threshold)

    def camera_enabled(self, camera: str) -> bool:
        with self._lock:
            return self._enabled.get(camera, False)

    def set_camera_enabled(self, camera: str, enabled: bool, now: float | None = None) -> Decisions:
        """Enable or disable decisions for ``camera``; disabling ends its open events (state OFF).

        Classifications of a disabled camera (frames still in flight) are ignored. KeyError for
        an unknown camera.
        """
        with self._lock:
            if camera not in self._enabled:
                raise KeyError(f"unknown camera {camera!r}")
            self._enabled[camera] = bool(enabled)
            if enabled:
                return Decisions()
            return self._end_where(lambda key: key[0] == camera, now)

    def update_config(self, cfg: Config, now: float | None = None) -> Decisions:
        """Switch to ``cfg``'s labels, cameras and rules between two classifications.

        Labels (or zones) that are no longer tracked end their open events and turn OFF;
        newly tracked ones start OFF. Runtime threshold overrides of surviving labels stay.
        """
        with self._lock:
            before = set(self._tracked_keys())
            self._apply_config(cfg)
            self._threshold_overrides = {
                k: v for k, v in self._threshold_overrides.items() if k in self._rules
            }
            after = set(self._tracked_keys())
            ended = self._end_where(lambda key: key not in after, now)
            for key in before - after:
                self._states.pop(key, None)
            added = tuple(
                StateChange(cam, zone, label, False, self._time_for(cam, now))
                for cam, zone, label in self._tracked_keys()
                if (cam, zone, label) not in before
            )
            return Decisions((), ended.state_changes + added, ended.events)

    def update_labels(self, labels: Mapping[str, LabelConfig], now: float | None = None) -> Decisions:
        """``update_config`` with only the ``labels:`` section replaced (runtime ``labels/set``)."""
        with self._lock:
            return self.update_config(self.cfg.model_copy(update={"labels": dict(labels)}), now)

    def initial_states(self) -> list[StateChange]:
        """OFF for every tracked (camera, zone, label): what to publish before the first frame."""
        with self._lock:
            now = self._clock()
            return [StateChange(cam, zone, label, False, now) for cam, zone, label in self._tracked_keys()]

    # -- the per-frame step ----------------------------------------------------------

    def observe(self, c: Classification, now: float | None = None) -> Decisions:
        """Detections, state changes and events caused by one classification."""
        with self._lock:
            if now is None:
                now = c.frame_time if self._use_frame_time else self._clock()
                previous = self._camera_time.get(c.camera)
                offset = self._camera_offset.get(c.camera, 0.0)
                if self._use_frame_time and previous is not None and now + offset < previous:
                    # The source started again (a file camera restarted by a reload, a clock step):
                    # continue its timeline so delays and cooldowns never see time run backwards.
                    self._camera_offset[c.camera] = previous - now
                now += self._camera_offset.get(c.camera, 0.0)
            self._camera_time[c.camera] = now
            if not self._enabled.get(c.camera, False):
                return Decisions()
            detections, changes, events = [], [], []
            for label, score in c.scores.items():
                rules = self._rules.get((c.camera, label))
                if rules is None:  # background, or not a label of this camera
                    continue
                if score >= rules.threshold:
                    detections.append(Detection(c.camera, label, score, c))
                key = (c.camera, c.zone, label)
                state = self._states.get(key)
                if state is None:
                    state = self._states[key] = _LabelState()
                change, event = self._advance(key, state, rules, score, now, c)
                if change is not None:
                    changes.append(change)
                if event is not None:
                    events.append(event)
            return Decisions(tuple(detections), tuple(changes), tuple(events))

    def _advance(self, key: Key, state: _LabelState, rules: AlertRules, score: float, now: float,
                 classification: Classification) -> tuple[StateChange | None, Event | None]:
        """Feed one score (0..1) at ``now`` (seconds) to one label's state machine.

        Returns the state change and the event this frame causes; either may be None.
        """
        state.last_score = score
        if state.on:
            return self._advance_while_on(key, state, rules, score, now, classification)
        return self._advance_while_off(key, state, rules, score, now, classification)

    def _advance_while_off(self, key: Key, state: _LabelState, rules: AlertRules, score: float, now: float,
                           classification: Classification) -> tuple[StateChange | None, Event | None]:
        """OFF: count frames in a row at or above threshold; turn ON, with a start event, once there
        are ``min_consecutive`` of them and the cooldown since the previous start has passed."""
        above = score >= rules.threshold
        state.consecutive = state.consecutive + 1 if above else 0
        cooled_down = state.last_start is None or now - state.last_start >= rules.cooldown_s
        if not (above and state.consecutive >= rules.min_consecutive and cooled_down):
            return None, None
        state.on, state.below_since = True, None
        state.event_id = self._new_event_id(now)
        state.start_time = state.last_start = state.last_event_time = now
        state.top_score = score
        camera, zone, label = key
        event = self._event(EventType.START, key, state, None, classification)
        return StateChange(camera, zone, label, True, now), event

    def _advance_while_on(self, key: Key, state: _LabelState, rules: AlertRules, score: float, now: float,
                          classification: Classification) -> tuple[StateChange | None, Event | None]:
        """ON: turn OFF, with an end event, once the score has stayed below threshold for ``off_delay_s``;
        otherwise send an update event at most every ``event_update_interval_s``."""
        if score >= rules.threshold:
            state.below_since = None
            state.top_score = max(state.top_score, score)
        else:
            if state.below_since is None:
                state.below_since = now
            if now - state.below_since >= rules.off_delay_s:
                camera, zone, label = key
                return StateChange(camera, zone, label, False, now), self._end(key, state, now, classification)
        if now - state.last_event_time < self._update_interval_s:
            return None, None
        state.last_event_time = now
        return None, self._event(EventType.UPDATE, key, state, None, classification)

    # -- helpers ---------------------------------------------------------------------

    def _time_for(self, camera: str, now: float | None) -> float:
        """``now`` if given; else the camera's newest frame time (frame-time mode) or the clock."""
        if now is not None:
            return now
        if self._use_frame_time and camera in self._camera_time:
            return self._camera_time[camera]
        return self._clock()

    def _event(self, type_: EventType, key: Key, st: _LabelState, end_time: float | None,
               c: Classification | None) -> Event:
        camera, zone, label = key
        return Event(type_, st.event_id, camera, zone, label, st.last_score, st.top_score, st.start_time, end_time, c)

    def _end(self, key: Key, st: _LabelState, now: float, c: Classification | None) -> Event:
        event = self._event(EventType.END, key, st, now, c)
        st.on, st.consecutive, st.below_since = False, 0, None
        return event

    def _end_where(self, predicate: Callable[[Key], bool], now: float | None) -> Decisions:
        changes, events = [], []
        for key, st in self._states.items():
            if predicate(key):
                st.consecutive = 0
                if st.on:
                    t = self._time_for(key[0], now)  # in frame-time mode: the camera's last frame
                    changes.append(StateChange(*key, False, t))
                    events.append(self._end(key, st, t, None))
        return Decisions((), tuple(changes), tuple(events))

    def end_silent_camera(self, camera: str, silent_for_s: float, reason: str = "camera_offline") -> Decisions:
        """End the open events of ``camera`` once it has delivered no frame for their label's ``off_delay_s``.

        ``silent_for_s`` is how long (seconds) the camera has been without frames, e.g. offline. Each
        open event whose ``off_delay_s`` has passed ends (state OFF) with ``reason`` in its ``end``;
        its end time is the camera's last decision time plus ``off_delay_s``, so an outage never reads
        as a detection that lasted through it. Calling it again ends nothing twice. Thread-safe.
        """
        with self._lock:
            last = self._camera_time.get(camera)  # its newest classification's time: open events imply one
            changes, events = [], []
            for key, st in self._states.items():
                rules = self._rules.get((key[0], key[2]))
                if key[0] != camera or not st.on or last is None or rules is None or silent_for_s < rules.off_delay_s:
                    continue
                end = last + rules.off_delay_s
                changes.append(StateChange(*key, False, end))
                events.append(replace(self._end(key, st, end, None), reason=reason))
            return Decisions((), tuple(changes), tuple(events))

    def finish(self, now: float | None = None) -> Decisions:
        """End every open event and turn its label OFF (at shutdown: every start gets its end)."""
        with self._lock:
            return self._end_where(lambda key: True, now)

    def active(self) -> list[Key]:
        """(camera, zone, label) of every label that is ON now."""
        with self._lock:
            return [key for key, st in self._states.items() if st.on]

