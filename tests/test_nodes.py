"""Several nodes on one prefix, without a broker: the ownership rule, the publisher's gate, cleanup."""

from __future__ import annotations

import json

import pytest

from streamclf.config import ConfigError, parse_config
from streamclf.homeassistant import HomeAssistantDiscovery, camera_of_config, discovery_entities, hub_id
from streamclf.nodes import NodeClaim, NodeOwnership, camera_level, holder_of
from streamclf.retained import OwnedRetainedTopics
from tests.test_control import FakePublisher
from tests.test_homeassistant_schemas import NEWER_THAN_CHECKED, home_assistant_check, needs_home_assistant


class GatedPublisher(FakePublisher):
    """FakePublisher with MqttClient's gate: withheld retained states are remembered and sent on release."""

    connected = True

    def __init__(self, prefix: str = "p"):
        super().__init__(prefix)
        self.gate = None
        self.remembered: dict[str, bytes] = {}

    def set_gate(self, gate) -> None:
        self.gate = gate

    def publish(self, topic, payload, qos=0, retain=False) -> None:
        if self.gate is None or self.gate(topic):
            super().publish(topic, payload, qos, retain)

    def set_retained(self, topic, payload, qos=1) -> None:
        self.remembered[topic] = payload.encode() if isinstance(payload, str) else payload
        self.publish(topic, payload, qos, retain=True)

    def republish_retained(self, which) -> None:
        for topic, payload in list(self.remembered.items()):
            if which(topic):
                self.publish(topic, payload, 1, retain=True)

    def claim_from(self, node: str, cameras: dict[str, float] | None, since: float = 0.0) -> None:
        """Another node's claim arriving (None: its claim removed)."""
        payload = b"" if cameras is None else NodeClaim(node, cameras, since).payload()
        self.subscriptions["p/nodes/+"](f"p/nodes/{node}", payload)


def _node(cameras=("x", "y"), started=100.0) -> tuple[NodeOwnership, GatedPublisher]:
    pub = GatedPublisher()
    own = NodeOwnership(pub, "me", cameras, now=started)
    own.start()
    return own, pub


def _settle(own: NodeOwnership, pub: GatedPublisher) -> None:
    """Our own claim comes back from the broker."""
    pub.subscriptions["p/nodes/+"]("p/nodes/me", pub.retained["p/nodes/me"])


@pytest.mark.parametrize("claims, expected", [
    ([("a", {"x": 5.0})], "a"),  # the only claim
    ([("a", {"x": 5.0}), ("b", {"x": 3.0})], "b"),  # the older claim keeps the camera
    ([("b", {"x": 5.0}), ("a", {"x": 5.0})], "a"),  # a tie: the smaller node id
    ([("a", {"y": 1.0}), ("b", {"x": 9.0})], "b"),  # a's claim is on another camera
    ([("a", {"y": 1.0})], None),  # nobody claims it
])
def test_the_older_claim_keeps_a_camera(claims, expected):
    assert holder_of("x", [NodeClaim(n, c, 0.0) for n, c in claims]) == expected


@pytest.mark.parametrize("payload, cameras, error", [
    (b'{"cameras": {"x": 2.5}, "since": 1}', {"x": 2.5}, None),
    (b'{"cameras": ["x", "y"], "since": 1}', {"x": 1.0, "y": 1.0}, None),  # a list: every camera since the start
    (b"ON", None, "not JSON"),
    (b'{"cameras": {"x": 1}}', None, "numeric"),
    (b'{"cameras": {"x": "old"}, "since": 1}', None, "must map"),
])
def test_claims_are_read_or_refused_with_a_reason(payload, cameras, error):
    if error:
        with pytest.raises(ValueError, match=error):
            NodeClaim.parse("a", payload)
    else:
        assert NodeClaim.parse("a", payload).cameras == cameras


@pytest.mark.parametrize("topic, camera", [
    ("p/x/enabled/state", "x"), ("p/x/zone/label", "x"), ("p/available", None), ("p/error", None),
    ("p/nodes/a", None), ("p/nodes/a/available", None), ("px/y/status", None), ("ha/switch/n/x/config", None),
])
def test_the_camera_of_a_topic(topic, camera):
    assert camera_level("p", topic) == camera


def test_nothing_of_a_camera_is_published_until_the_claims_are_known():
    own, pub = _node()
    assert list(pub.retained) == ["p/nodes/me"]  # the claim goes first
    pub.set_retained("p/x/enabled/state", "ON")
    pub.publish("p/x/detection", "{}")
    pub.publish("p/error", "{}")
    assert [t for t, _, _ in pub.published] == ["p/nodes/me", "p/error"]
    changes = []
    own.on_change(lambda: changes.append(own.holdings.held))
    _settle(own, pub)
    assert changes == [frozenset({"x", "y"})] and pub.retained["p/x/enabled/state"] == b"ON"


def test_a_camera_another_node_claimed_first_is_withheld_reported_and_taken_over_live(caplog):
    own, pub = _node(started=100.0)
    pub.claim_from("other", {"y": 50.0, "z": 50.0})  # retained, older
    _settle(own, pub)
    assert own.holdings.held == {"x"} and [(c.camera, c.holder) for c in own.holdings.conflicts] == [("y", "other")]
    assert "camera y is also claimed by node other" in caplog.text
    pub.set_retained("p/y/status", "online")
    assert "p/y/status" not in pub.retained and not own.allows("p/z/status")  # z: another node's camera
    assert own.claimed_elsewhere("y") and not own.claimed_elsewhere("x")
    # The other node restarts: its claim is now the newer one, so this node takes y and sends what it held back.
    pub.claim_from("other", {"y": 200.0}, since=200.0)
    assert own.holdings.held == {"x", "y"} and not own.holdings.conflicts
    assert pub.retained["p/y/status"] == b"online" and own.allows("p/z/status")
    # A retired node's claim removed by the operator (an empty retained message): nothing claims z any more.
    pub.claim_from("other", {"y": 50.0})
    assert own.holdings.held == {"x"}
    pub.claim_from("other", None)
    assert own.holdings.held == {"x", "y"} and not own.holdings.elsewhere


def test_a_second_process_with_our_node_id_is_reported_and_its_cameras_spared(caplog):
    """Two daemons given one mqtt.node_id write one claim topic: each must see the other's claim, not take it
    for an old one of its own, or its cleanup deletes the other's camera topics as leftovers."""
    own, pub = _node(cameras=("x",), started=100.0)
    owned = OwnedRetainedTopics(pub, "p/+/enabled/state", lambda t, p: camera_level("p", t), own)
    owned.start()
    _settle(own, pub)
    own.claim(["x", "z"], now=200.0)  # our own earlier payload may still come back: it is ours, not another's
    pub.subscriptions["p/nodes/+"]("p/nodes/me", NodeClaim("me", {"x": 100.0}, 100.0).payload())
    assert "another process" not in caplog.text
    pub.claim_from("me", {"y": 150.0, "x": 160.0}, since=150.0)  # the twin's claim overwrites ours
    assert "another process" in caplog.text and "node_id" in caplog.text
    assert own.claimed_elsewhere("y") and own.holdings.held == {"x", "z"}
    pub.retained["p/y/enabled/state"] = b"ON"
    pub.subscriptions["p/+/enabled/state"]("p/y/enabled/state", b"ON")
    assert owned.removed_stale == 0 and pub.retained["p/y/enabled/state"] == b"ON"


def test_a_reload_keeps_the_since_of_cameras_already_claimed():
    own, pub = _node(cameras=("x",), started=100.0)
    _settle(own, pub)
    own.claim(["x", "new"], now=300.0)
    assert json.loads(pub.retained["p/nodes/me"])["cameras"] == {"new": 300.0, "x": 100.0}


def test_no_echo_decides_after_the_timeout_while_connected():
    own, pub = _node()
    own.tick(now=0.0)
    own.tick(now=own.settle_timeout_s - 1)
    assert not own.settled
    own.tick(now=own.settle_timeout_s + 0.1)
    assert own.settled and own.holdings.held == {"x", "y"}


def test_cleanup_waits_for_the_claims_and_spares_the_cameras_other_nodes_hold():
    own, pub = _node(cameras=("x",))
    owned = OwnedRetainedTopics(pub, "p/+/enabled/state", lambda t, p: camera_level("p", t), own)
    owned.start()
    owned.replace({"p/x/enabled/state": "ON"})
    on_message = pub.subscriptions["p/+/enabled/state"]
    pub.claim_from("other", {"y": 1.0})
    for topic in ("p/x/enabled/state", "p/y/enabled/state", "p/old/enabled/state"):
        pub.retained[topic] = b"OFF"  # what the broker held
        on_message(topic, b"OFF")
    assert owned.removed_stale == 0  # judged only once the claims are known
    _settle(own, pub)
    owned.flush_pending()
    assert owned.removed_stale == 1 and "p/old/enabled/state" not in pub.retained  # nobody claims it
    assert pub.retained["p/y/enabled/state"] == b"OFF" and pub.retained["p/x/enabled/state"] == b"ON"


CONFIG = """
mqtt: {topic_prefix: home/clf, node_id: east}
labels:
  person: {threshold: 0.6}
  empty: {background: true}
cameras:
  front: {source: front.mp4}
  back: {source: back.mp4}
"""


def test_a_node_is_a_hub_of_its_own_and_cameras_keep_their_ids():
    cfg = parse_config(CONFIG)
    entities = {e.object_id: e for e in discovery_entities(cfg, cameras=["front"])}
    online = entities["hub_online"]
    assert online.hub and online.config["state_topic"] == "home/clf/nodes/east/available"
    assert online.config["device"]["identifiers"] == ["streamclf_home_clf-node-east"]
    assert online.config["unique_id"] == "streamclf_home_clf-node-east_hub_online"
    assert online.config["device"]["name"] == "streamclf home/clf east"
    assert entities["hub_classified_fps"].config["state_topic"] == "home/clf/nodes/east/stats"
    switch = entities["front_enabled"]
    assert not switch.hub and switch.config["unique_id"] == "streamclf_home_clf_front_enabled"
    assert switch.config["device"]["via_device"] == hub_id("home/clf", "east")
    assert "back_enabled" not in entities  # not held by this node
    camera_of = camera_of_config("streamclf_home_clf")
    assert camera_of("t", json.dumps(switch.config).encode()) == "front"
    assert camera_of("t", json.dumps(online.config).encode()) is None and camera_of("t", b"junk") is None


def test_a_camera_named_like_the_nodes_level_needs_another_name_with_a_node_id():
    with pytest.raises(ConfigError, match="nodes"):
        parse_config(CONFIG.replace("back:", "nodes:"))
    parse_config(CONFIG.replace("back:", "nodes:").replace(", node_id: east", ""))
    with pytest.raises(ConfigError, match="node name"):
        parse_config(CONFIG.replace("node_id: east", "node_id: 'a/b'"))


@needs_home_assistant
def test_a_nodes_discovery_passes_home_assistants_schemas():
    pub = GatedPublisher("home/clf")
    HomeAssistantDiscovery(parse_config(CONFIG), pub, hardware="cpu, fp32").start()  # no ownership: all cameras
    payloads = {t: p.decode() for t, p in pub.retained.items()}
    assert any("/streamclf_home_clf-node-east/hub_online/" in t for t in payloads)
    report = home_assistant_check(payloads)
    assert (report["errors"], report["validated"]) == ({}, len(payloads))
    assert {k for keys in report["dropped"].values() for k in keys} <= NEWER_THAN_CHECKED
