"""Several daemons (nodes) on one broker and one topic prefix: which node publishes for which camera.

With ``mqtt.node_id`` set, a node claims its cameras with a retained JSON message on
``<prefix>/nodes/<node_id>``: ``{"cameras": {"<camera>": <since>, ...}, "since": <start>}``, in
wall-clock seconds (Unix time): when this process first claimed each camera, and when it started.
It reads the other nodes' claims on ``<prefix>/nodes/+`` (retained at start, live after) and
decides, camera by camera, whether it *holds* the camera:

- a camera no other node claims is held;
- a camera another node claims too stays with the older claim (the smaller ``since``; on a tie,
  the smaller node id). The other node *yields* it: it keeps capturing and classifying it, so that
  it can take over at once when the holder's claim goes away, but publishes nothing under
  ``<prefix>/<camera>/`` and announces no Home Assistant entity for it, and it logs the conflict
  once as an error and reports it (status, ``/healthz``, metrics, ``<prefix>/stats``).

Until a node has seen its own claim come back from the broker it holds nothing: the broker sends a
subscription's retained messages before anything published after the subscription, so by then the
node knows every claim made before it started, and it never publishes over another node's camera
even for a moment. Cleanup waits for that moment too (``OwnedRetainedTopics``): a retained topic of a
camera another node holds is never a leftover. A claim stays retained when its node stops (a node
under maintenance keeps its cameras and entities); ``<prefix>/nodes/<node>/available`` says whether
it runs. An operator retires a node for good by publishing an empty retained message on its claim
topic. Two processes given one node id write one claim topic: once settled, a claim there that this
process never sent is logged as an error and judged as another node's.

The publisher asks ``allows(topic)`` before it sends anything; a withheld retained state is still
remembered by the publisher, and sent once the camera is held.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from streamclf.config import NODES_TOPIC_LEVEL
from streamclf.mqtt_client import MqttClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeClaim:
    """One node's claim: camera -> since (Unix seconds), and when the node started."""

    node: str
    cameras: Mapping[str, float]
    since: float

    def payload(self) -> bytes:
        body = {"cameras": dict(sorted(self.cameras.items())), "since": self.since}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, node: str, payload: bytes) -> NodeClaim:
        """The claim in ``payload``; raises ValueError saying what is wrong with it."""
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("since"), (int, float)):
            raise ValueError('expected a JSON object with "cameras" and a numeric "since"')
        since = float(body["since"])
        cameras = body.get("cameras")
        if isinstance(cameras, list) and all(isinstance(c, str) for c in cameras):
            return cls(node, {c: since for c in cameras}, since)  # a plain list: every camera since the start
        if isinstance(cameras, dict) and all(isinstance(v, (int, float)) for v in cameras.values()):
            return cls(node, {str(c): float(v) for c, v in cameras.items()}, since)
        raise ValueError('"cameras" must map camera names to their since, or list camera names')


def holder_of(camera: str, claims: Iterable[NodeClaim]) -> str | None:
    """The node that keeps ``camera``: the oldest claim on it, the smaller node id on a tie; None if unclaimed."""
    claimants = [(c.cameras[camera], c.node) for c in claims if camera in c.cameras]
    return min(claimants)[1] if claimants else None


@dataclass(frozen=True)
class CameraConflict:
    """A camera this node claims but yields: ``holder`` claimed it first."""

    camera: str
    holder: str
    holder_since: float  # Unix seconds


@dataclass(frozen=True)
class Holdings:
    """Who publishes what, at one moment; replaced whole, so readers on any thread need no lock."""

    settled: bool = False  # this node has seen its own claim come back, so it knows the others'
    mine: frozenset[str] = frozenset()  # cameras this node claims
    held: frozenset[str] = frozenset()  # of those, the ones it publishes for
    elsewhere: frozenset[str] = frozenset()  # cameras other nodes claim
    conflicts: tuple[CameraConflict, ...] = field(default=())


class NodeOwnership:
    """This node's claim, the other nodes' claims as the broker reports them, and who holds each camera.

    The one owner of that state: the publisher's gate, cleanup, discovery, control and status all
    read ``holdings`` (a frozen snapshot). ``on_change`` callbacks run when the node first knows the
    claims and whenever the cameras it holds change, on the thread that learnt it (paho's network
    thread, or the main thread on a reload or tick).
    """

    settle_timeout_s = 10.0  # connected this long without our claim's echo (a broker ACL?): decide anyway

    def __init__(self, publisher: MqttClient, node: str, cameras: Iterable[str], now: float | None = None):
        self._publisher = publisher
        self.node = node
        self.claim_topic = publisher.topic(NODES_TOPIC_LEVEL, node)
        started = time.time() if now is None else now
        self._lock = threading.Lock()  # claims and listeners; the holdings are swapped whole under it
        self._mine = NodeClaim(node, {c: started for c in cameras}, started)
        self._sent = {self._mine.payload()}  # every claim this process published: their echoes are ours
        self._others: dict[str, NodeClaim] = {}
        self._bad_claims: set[bytes] = set()  # unreadable claim payloads already logged
        self._holdings = Holdings(mine=frozenset(self._mine.cameras))
        self._listeners: list[Callable[[], None]] = []
        self._connected_at: float | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the claims and queue ours; call first, before anything else subscribes or
        publishes, so the claims arrive before any other retained message and ours goes out first."""
        self._publisher.set_gate(self.allows)
        self._publisher.subscribe(self._publisher.topic(NODES_TOPIC_LEVEL, "+"), self._on_claim)
        self._publisher.set_retained(self.claim_topic, self._mine.payload())

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the claims are known, and whenever the held cameras change."""
        with self._lock:
            self._listeners.append(callback)

    def claim(self, cameras: Iterable[str], now: float | None = None) -> None:
        """Claim exactly ``cameras`` from now on (a reload); a camera claimed before keeps its since."""
        now = time.time() if now is None else now
        with self._lock:
            old = self._mine.cameras
            self._mine = NodeClaim(self.node, {c: old.get(c, now) for c in cameras}, self._mine.since)
            payload = self._mine.payload()
            self._sent.add(payload)
        self._publisher.set_retained(self.claim_topic, payload)
        self._update()

    def tick(self, now: float | None = None) -> None:
        """Called every supervising tick: decides without the echo once connected for ``settle_timeout_s``."""
        if self._holdings.settled:
            return
        now = time.monotonic() if now is None else now
        if not self._publisher.connected:
            self._connected_at = None
        elif self._connected_at is None:
            self._connected_at = now
        elif now - self._connected_at >= self.settle_timeout_s:
            log.warning("nodes: node %s's own claim on %s did not come back within %g s (may this client read "
                        "and write %s/+?); going by the claims seen so far", self.node, self.claim_topic,
                        self.settle_timeout_s, self._publisher.topic(NODES_TOPIC_LEVEL))
            self._update(settle=True)

    # -- reading (any thread) ---------------------------------------------------------------

    @property
    def holdings(self) -> Holdings:
        return self._holdings

    @property
    def settled(self) -> bool:
        """The claims are known (our own came back, or ``settle_timeout_s`` passed connected)."""
        return self._holdings.settled

    def held_of(self, cameras: Iterable[str]) -> list[str]:
        """Those of ``cameras`` this node publishes for, in the given order."""
        held = self._holdings.held
        return [c for c in cameras if c in held]

    def claimed_elsewhere(self, camera: str) -> bool:
        """Another node claims ``camera`` and this node does not hold it: its topics are not ours to touch."""
        h = self._holdings
        return camera in h.elsewhere and camera not in h.held

    def allows(self, topic: str) -> bool:
        """May the publisher send on ``topic`` now? Only ``<prefix>/<camera>/...`` topics are ever withheld:
        those of a camera this node claims and does not hold (yet), and those of a camera another node holds."""
        camera = camera_level(self._publisher.prefix, topic)
        if camera is None:
            return True
        h = self._holdings
        return camera in h.held if camera in h.mine else not self.claimed_elsewhere(camera)

    # -- claims from the broker (paho's network thread) ---------------------------------------

    def _on_claim(self, topic: str, payload: bytes) -> None:
        node = topic.rsplit("/", 1)[-1]
        if node == self.node:
            # Our own claim back: everything the broker held when we subscribed has arrived before it.
            # (Our claim of an earlier run, retained, differs in its since and is not taken for the echo.)
            if payload == self._mine.payload() and not self._holdings.settled:
                self._update(settle=True)
            if not self._holdings.settled or payload in self._sent:
                return
            # Settled, and a claim on our topic we never sent: another process runs with this node id.
            # Judged as another node's claim, so that neither deletes the other's topics as leftovers.
            node = self._twin(node, payload)
        with self._lock:
            if not payload:
                gone = self._others.pop(node, None)
                if gone is not None:
                    log.info("nodes: node %s's claim was removed (cameras %s)", node, ", ".join(gone.cameras) or "none")
            else:
                try:
                    self._others[node] = NodeClaim.parse(node, payload)
                except ValueError as exc:
                    if payload not in self._bad_claims:
                        self._bad_claims.add(payload)
                        log.warning("nodes: ignoring the claim on %s: %s", topic, exc)
                    return
        self._update()

    def _twin(self, node: str, payload: bytes) -> str:
        """The name another process's claims on our topic go by (logged once)."""
        twin = f"{node} (another process)"
        if twin not in self._others and payload:
            log.error("nodes: another process publishes claims as node %s on %s: two daemons share mqtt.node_id; "
                      "give each its own", node, self.claim_topic)
        return twin

    # -- deciding ---------------------------------------------------------------------------

    def _update(self, settle: bool = False) -> None:
        """Recompute the holdings; log what changed, release what became held, tell the listeners."""
        with self._lock:
            old = self._holdings
            settled = old.settled or settle
            others = list(self._others.values())
            mine = self._mine
            conflicts, held = [], []
            for camera in mine.cameras:
                holder = holder_of(camera, [mine, *others])
                if holder == self.node:
                    held.append(camera)
                elif holder is not None:
                    conflicts.append(CameraConflict(camera, holder, self._others[holder].cameras[camera]))
            new = Holdings(settled, frozenset(mine.cameras), frozenset(held) if settled else frozenset(),
                           frozenset(c for o in others for c in o.cameras), tuple(conflicts) if settled else ())
            self._holdings = new
            listeners = list(self._listeners)
        self._report(old, new, others)
        gained = new.held - old.held
        if gained:
            # Whatever was withheld for these cameras (states, status, control echoes) goes out now.
            prefix = self._publisher.prefix
            self._publisher.republish_retained(lambda t: camera_level(prefix, t) in gained)
        if (settled and not old.settled) or new.held != old.held:
            for callback in listeners:
                callback()

    def _report(self, old: Holdings, new: Holdings, others: list[NodeClaim]) -> None:
        if new.settled and not old.settled:
            log.info("nodes: node %s holds %d of its %d camera(s); %d other node(s) claim cameras on this prefix",
                     self.node, len(new.held), len(new.mine), len(others))
        before = {c.camera: c.holder for c in old.conflicts}
        for c in new.conflicts:
            if before.get(c.camera) != c.holder:
                log.error("nodes: camera %s is also claimed by node %s, whose claim is older (since %s); node %s "
                          "does not publish for it; remove it from one of the two configs",
                          c.camera, c.holder, _iso(c.holder_since), self.node)
        for camera in sorted(set(before) & new.held):
            log.info("nodes: node %s now holds camera %s (node %s's claim on it is gone or newer) and publishes it",
                     self.node, camera, before[camera])
        for camera in sorted((new.held & new.elsewhere) - (old.held & old.elsewhere)):
            rivals = ", ".join(sorted(o.node for o in others if camera in o.cameras))
            log.warning("nodes: node(s) %s also claim camera %s; node %s's claim is older and keeps it",
                        rivals, camera, self.node)


def camera_level(prefix: str, topic: str) -> str | None:
    """The camera of a ``<prefix>/<camera>/...`` topic, or None for any other topic (node-level ones,
    ``<prefix>/nodes/...``, topics elsewhere)."""
    if not topic.startswith(prefix) or topic[len(prefix):len(prefix) + 1] != "/":
        return None
    camera, sep, _ = topic[len(prefix) + 1:].partition("/")
    return camera if sep and camera != NODES_TOPIC_LEVEL else None


def _iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))
