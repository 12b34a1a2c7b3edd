"""What a batch reads, and the one owner that changes it.

A batch reads the config, the label set (text embeddings), the zones, the paused cameras and
the decider's thresholds. ``PipelineState`` owns all of them and is the only code that
changes them: a new config or label set (SIGHUP reload and runtime ``labels/set`` both call
``apply``), a paused camera, a threshold. The first four live in one frozen ``BatchState``
swapped whole, so a reader without a lock sees either the old one or the new one, never half
of each.

Two locks, both private to this class, always taken in this order:

- the *batch* lock is held for a whole batch, model call included (``batch()``). ``apply``
  takes it, so a new config, label set or zones never lands between a batch's change-gate
  plan and its scoring, and remembered scores always belong to the label set in force.
- the *decision* lock is held while a batch scores and decides (``deciding()``). Pausing a
  camera and setting a threshold take only this one: they never wait for a model call, and
  once they return no frame of a batch scored afterwards is published against the old value.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

from streamclf.alerts import AlertPublisher
from streamclf.config import Config
from streamclf.decisions import Decider, Decisions
from streamclf.gating import ChangeGate
from streamclf.scoring import LabelSet
from streamclf.snapshots import SnapshotWriter
from streamclf.zones import ZoneCropper


class SwapTimeout(Exception):
    """``apply`` could not happen between two batches in time; nothing changed."""


@dataclass(frozen=True)
class BatchState:
    """Everything a batch reads besides thresholds; replaced whole, never changed."""

    cfg: Config
    label_set: LabelSet | None  # None while a remote model has been away since the start
    zones: ZoneCropper
    paused: frozenset[str] = frozenset()  # cameras paused at runtime: captured, not classified

    def classifies(self, camera: str) -> bool:
        """True if frames of ``camera`` are classified: configured (not removed by a reload) and not paused."""
        return camera in self.cfg.cameras and camera not in self.paused


class PipelineState:
    """The owner of ``BatchState``, the decider's rules and the change gate's memory (see the module docstring)."""

    def __init__(self, initial: BatchState, decider: Decider, alerts: AlertPublisher | None, gate: ChangeGate | None):
        # ``alerts`` None: decisions of pauses and swaps go nowhere (an offline run that records scores).
        self._current = initial
        self._decider = decider
        self._alerts = alerts
        self._gate = gate
        self._batch_lock = threading.Lock()
        self._decision_lock = threading.Lock()

    @property
    def current(self) -> BatchState:
        """The state in force; safe to read from any thread without a lock (it is replaced whole)."""
        return self._current

    @contextmanager
    def batch(self) -> Iterator[BatchState]:
        """Hold the batch lock for one whole batch; yields the state it runs with."""
        with self._batch_lock:
            yield self._current

    @contextmanager
    def deciding(self) -> Iterator[BatchState]:
        """Hold the decision lock while a batch scores and decides; yields the state in force then."""
        with self._decision_lock:
            yield self._current

    # -- changes that need no batch boundary ------------------------------------------

    def set_paused(self, camera: str, paused: bool) -> None:
        """Pause or resume classification of ``camera``; pausing ends its open events (state OFF)."""
        with self._decision_lock:
            current = self._current
            now_paused = current.paused | {camera} if paused else current.paused - {camera}
            self._current = replace(current, paused=frozenset(now_paused))
            self._publish(self._decider.set_camera_enabled(camera, not paused))

    def end_silent(self, camera: str, silent_for_s: float, reason: str) -> None:
        """End ``camera``'s open events whose ``off_delay_s`` has passed in ``silent_for_s`` seconds without frames.

        Under the decision lock, as a pause is: a batch deciding now publishes before or after, never between.
        """
        with self._decision_lock:
            self._publish(self._decider.end_silent_camera(camera, silent_for_s, reason))

    def threshold(self, camera: str, label: str) -> float:
        """The threshold (0..1) in force for ``label`` on ``camera``."""
        return self._decider.threshold(camera, label)

    def set_threshold(self, camera: str, label: str, threshold: float) -> None:
        """Set ``label``'s threshold (0..1) on ``camera``, from the next batch on."""
        with self._decision_lock:
            self._decider.set_threshold(camera, label, threshold)

    # -- the swap rule ----------------------------------------------------------------

    def apply(self, cfg: Config, label_set: LabelSet | None, snapshots: SnapshotWriter | None,
              timeout_s: float) -> SnapshotWriter | None:
        """Switch to ``cfg`` between two batches, waiting up to ``timeout_s`` seconds for the batch in flight.

        ``label_set``: new text embeddings (None: the labels' prompts are unchanged). ``snapshots``:
        a writer not yet started that replaces the current one (None: keep it); it starts once the
        swap is certain. Returns the writer that was replaced, for the caller to stop outside the
        locks. Raises SwapTimeout with nothing changed.
        """
        if not self._batch_lock.acquire(timeout=timeout_s):
            raise SwapTimeout(f"a batch has been running for more than {timeout_s:g} s")
        try:
            with self._decision_lock:
                old = self._current
                zones = old.zones if cfg.cameras == old.cfg.cameras else ZoneCropper(cfg.cameras)
                self._current = BatchState(cfg, old.label_set if label_set is None else label_set, zones, old.paused)
                if label_set is not None and self._gate is not None:
                    self._gate.forget()  # remembered scores are over the old labels
                replaced = self._swap_alert_settings(cfg, snapshots)
                for decisions in self._decisions_for(old.cfg, cfg):
                    self._publish(decisions)
                return replaced
        finally:
            self._batch_lock.release()

    def fill_labels(self, cfg: Config, label_set: LabelSet) -> bool:
        """Set the labels that could not be encoded at start (a remote model away), between two batches.

        Only while ``cfg`` is still the config in force and no labels are set: a reload meanwhile
        brought (or will bring) its own. Returns whether they were set.
        """
        with self._batch_lock, self._decision_lock:
            old = self._current
            if old.cfg is not cfg or old.label_set is not None:
                return False
            self._current = BatchState(cfg, label_set, old.zones, old.paused)
            return True

    def _publish(self, decisions: Decisions) -> None:
        if self._alerts is not None:
            self._alerts.publish(decisions)

    def _swap_alert_settings(self, cfg: Config, snapshots: SnapshotWriter | None) -> SnapshotWriter | None:
        replaced = None
        if self._alerts is None:
            return snapshots  # nothing to swap it into: the caller stops it
        if snapshots is not None:
            snapshots.start()
            replaced, self._alerts.snapshots = self._alerts.snapshots, snapshots
        self._alerts.cfg = cfg
        return replaced

    def _decisions_for(self, old: Config, new: Config) -> list[Decisions]:
        # Labels (or zones) no longer tracked end their events and turn OFF; new ones start OFF.
        decisions = [self._decider.update_config(new)]
        for name, cam in new.cameras.items():
            if name in old.cameras and old.cameras[name].enabled != cam.enabled:
                decisions.append(self._decider.set_camera_enabled(name, cam.enabled))
        return decisions
