"""Several daemons (nodes) on one broker and one topic prefix, as a site runs them: real mosquitto,
real ``streamclf run`` subprocesses over the tiny CLIP, file cameras.

Each node keeps its own retained topics and Home Assistant configs while the other starts, restarts
and drops a camera; a camera both nodes claim stays with the older claim, the other node reports the
conflict (log, /healthz, metrics, stats) and publishes nothing for it, and takes it over live when
the holder's claim becomes the newer one.
"""

from __future__ import annotations

import json
import signal
import uuid

import numpy as np
import paho.mqtt.publish
import pytest

from tests.conftest import base_config, wait_until
from tests.servers import MqttCollector, free_port, make_video
from tests.test_service import http_get, scrape

pytestmark = pytest.mark.slow


def _video(path):
    def frame(i: int) -> np.ndarray:
        img = np.zeros((240, 320, 3), np.uint8)
        img[:] = (0, 0, 255)
        img[:, (i * 13) % 320:] //= 2  # keep frames distinct
        return img

    return make_video(path, 20, fps=10, size=(320, 240), color_fn=frame)


def retained_now(broker, root: str) -> dict[str, bytes]:
    """Every retained message under ``root``/#, as the broker holds them now.

    A marker is published after subscribing: the broker sends the retained messages before it, so
    once it arrives they are all in, with no waiting and hoping.
    """
    marker = f"{root}/marker-{uuid.uuid4().hex[:8]}"
    with MqttCollector(broker.host, broker.port, f"{root}/#") as c:
        paho.mqtt.publish.single(marker, b"x", qos=1, hostname=broker.host, port=broker.port)
        msgs = c.wait_for(lambda m: any(t == marker for t, _, _ in m), timeout=20)
    return {t: p for t, p, retain in msgs if retain and p}


def _node_cfg(tiny_clip_dir, broker, prefix, ha, node, cameras, video, **sections):
    cam = {"source": str(video), "fps": 2, "realtime": True, "loop": True}
    return base_config(tiny_clip_dir, broker, prefix, {name: cam for name in cameras},
                       mqtt={"node_id": node}, homeassistant={"discovery_prefix": ha},
                       service={"stats_interval_s": 1}, **sections)


def _camera_topics(prefix, ha, base, camera) -> set[str]:
    """Retained topics a running node keeps for ``camera``: control echoes and a few discovery configs."""
    return {f"{prefix}/{camera}/enabled/state", f"{prefix}/{camera}/red_thing/threshold/state",
            f"{prefix}/{camera}/status", f"{ha}/switch/{base}/{camera}_enabled/config",
            f"{ha}/binary_sensor/{base}/{camera}_label_red_thing/config",
            f"{ha}/number/{base}/{camera}_threshold_blue_thing/config"}


def _node_topics(prefix, ha, base, node) -> set[str]:
    return {f"{prefix}/nodes/{node}", f"{prefix}/nodes/{node}/available",
            f"{ha}/binary_sensor/{base}-node-{node}/hub_online/config"}


def _all_retained(broker, prefix, ha) -> dict[str, bytes]:
    return {**retained_now(broker, prefix), **retained_now(broker, ha)}


def _deleted(collector_msgs, topics) -> list[str]:
    return [t for t, p, _ in collector_msgs if not p and t in topics]


def _settled(daemon, node: str) -> bool:
    return f"nodes: node {node} holds" in daemon.output


def test_two_nodes_keep_their_own_topics_through_restarts_and_a_removed_camera(
        tmp_path, broker, prefix, tiny_clip_dir, start_daemon):
    ha = f"{prefix}ha"
    base = f"streamclf_{prefix}"
    video = _video(tmp_path / "v.mp4")
    a_topics = (_camera_topics(prefix, ha, base, "a_one") | _camera_topics(prefix, ha, base, "a_two")
                | _node_topics(prefix, ha, base, "a"))
    b_topics = _camera_topics(prefix, ha, base, "b_one") | _node_topics(prefix, ha, base, "b")
    with MqttCollector(broker.host, broker.port, f"{prefix}/#") as states, \
            MqttCollector(broker.host, broker.port, f"{ha}/#") as configs:
        a = start_daemon(_node_cfg(tiny_clip_dir, broker, prefix, ha, "a", ["a_one", "a_two"], video))
        wait_until(lambda: a_topics <= set(_all_retained(broker, prefix, ha)), 90, "node a's retained topics")
        b_cfg = _node_cfg(tiny_clip_dir, broker, prefix, ha, "b", ["b_one", "b_gone"], video)
        b = start_daemon(b_cfg)
        b_gone = _camera_topics(prefix, ha, base, "b_gone")
        wait_until(lambda: (a_topics | b_topics | b_gone) <= set(_all_retained(broker, prefix, ha)), 90,
                   "both nodes' retained topics")
        hub_b = json.loads(_all_retained(broker, prefix, ha)[f"{ha}/switch/{base}/b_one_enabled/config"])["device"]
        assert hub_b["identifiers"] == [f"{base}_b_one"] and hub_b["via_device"] == f"{base}-node-b"
        claim = json.loads(_all_retained(broker, prefix, ha)[f"{prefix}/nodes/b"])
        assert set(claim["cameras"]) == {"b_one", "b_gone"} and claim["since"] > 0

        # Node b restarts with the same config: nothing of either node is deleted.
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0, b.output
        wait_until(lambda: _all_retained(broker, prefix, ha).get(f"{prefix}/nodes/b/available") == b"offline", 30,
                   "node b offline")
        b = start_daemon(b_cfg)
        wait_until(lambda: _settled(b, "b"), 90, "node b to know the claims again")
        wait_until(lambda: _all_retained(broker, prefix, ha).get(f"{prefix}/nodes/b/available") == b"online", 30,
                   "node b online again")
        assert not _deleted(states.all + configs.all, a_topics | b_topics | b_gone)
        assert (a_topics | b_topics | b_gone) <= set(_all_retained(broker, prefix, ha))

        # Node b drops camera b_gone: b deletes its leftovers, a's topics stay untouched.
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0, b.output
        b = start_daemon(_node_cfg(tiny_clip_dir, broker, prefix, ha, "b", ["b_one"], video))
        gone_states = {t for t in b_gone if t.startswith(prefix + "/") and not t.endswith("/status")}
        gone_configs = b_gone - {t for t in b_gone if t.startswith(prefix + "/")}
        wait_until(lambda: not (gone_states | gone_configs) & set(_all_retained(broker, prefix, ha)), 90,
                   "b_gone's leftovers deleted")
        assert not _deleted(states.all + configs.all, a_topics | b_topics)
        assert (a_topics | b_topics) <= set(_all_retained(broker, prefix, ha))
        assert a.proc.poll() is None and b.proc.poll() is None, a.output[-3000:] + b.output[-3000:]
        assert "removing retained" not in a.output  # a found nothing of b's to take for a leftover
        assert "also claimed" not in a.output + b.output


def test_a_camera_two_nodes_claim_stays_with_the_older_claim_and_the_other_reports_it(
        tmp_path, broker, prefix, tiny_clip_dir, start_daemon):
    ha = f"{prefix}ha"
    base = f"streamclf_{prefix}"
    video = _video(tmp_path / "v.mp4")
    port = free_port()
    a_cfg = _node_cfg(tiny_clip_dir, broker, prefix, ha, "a", ["a_one", "shared"], video)
    with MqttCollector(broker.host, broker.port, f"{prefix}/#") as states, \
            MqttCollector(broker.host, broker.port, f"{ha}/#") as configs:
        a = start_daemon(a_cfg)
        shared_switch = f"{ha}/switch/{base}/shared_enabled/config"
        wait_until(lambda: _settled(a, "a") and shared_switch in retained_now(broker, ha), 90, "node a announced")
        b = start_daemon(_node_cfg(tiny_clip_dir, broker, prefix, ha, "b", ["b_one", "shared"], video,
                                   metrics={"enabled": True, "port": port, "page": False}))
        wait_until(lambda: "camera shared is also claimed by node a" in b.output, 90, "node b's conflict error")
        assert "node(s) b also claim camera shared" in a.output

        # Reported where operators look: /healthz (degraded, still 200), metrics and the stats message.
        status, body = wait_until(lambda: (r := http_get(f"http://127.0.0.1:{port}/healthz"))[0] == 200 and r, 30,
                                  "/healthz")
        health = json.loads(body)
        assert health["status"] == "degraded" and any("shared" in r and "node a" in r for r in health["reasons"])
        metrics = scrape(port)
        assert metrics['streamclf_camera_conflict{camera="shared",holder="a"}'] == 1
        assert metrics["streamclf_camera_conflicts"] == 1
        stats = wait_until(lambda: states.json_messages(f"{prefix}/nodes/b/stats"), 30, "node b's stats")
        assert stats[-1]["conflicts"] == {"shared": "a"} and stats[-1]["node"] == "b"

        # Not fought over: every config of the shared camera links it to a's hub, none was deleted; b's own
        # camera is announced as usual.
        wait_until(lambda: f"{ha}/switch/{base}/b_one_enabled/config" in retained_now(broker, ha), 30, "b_one")
        shared = [json.loads(p) for t, p, _ in configs.all if t.startswith(f"{ha}/") and "/shared_" in t and p]
        assert shared and {c["device"]["via_device"] for c in shared} == {f"{base}-node-a"}
        assert not [t for t, p, _ in states.all + configs.all if not p and "shared" in t]

        # a restarts: its claim is now the newer one, so b takes the camera over live, and a reports it.
        a.signal(signal.SIGTERM)
        assert a.wait(30) == 0, a.output
        configs.clear()
        a = start_daemon(a_cfg)
        wait_until(lambda: "camera shared is also claimed by node b" in a.output, 90, "node a's conflict error")
        wait_until(lambda: "node b now holds camera shared" in b.output, 30, "node b taking over")
        wait_until(lambda: json.loads(retained_now(broker, ha)[shared_switch])["device"]["via_device"]
                   == f"{base}-node-b", 30, "the shared camera's entities linked to b's hub")
        health = json.loads(http_get(f"http://127.0.0.1:{port}/healthz")[1])
        assert health["status"] == "ok", health
        assert not [t for t, p, _ in states.all + configs.all if not p and "shared" in t]
        assert a.proc.poll() is None and b.proc.poll() is None
