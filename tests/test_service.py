"""The daemon as a service: sd_notify and the watchdog, metrics, /healthz, <prefix>/stats, SIGHUP
reload, credentials and JSON logs — against a real daemon subprocess, a real unix datagram
socket, real HTTP and a real mosquitto. Pure rules (progress, reload plans, credentials) are
table-driven unit tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml

from streamclf.config import ConfigError, MqttConfig, parse_config
from streamclf.service.health import ProgressMonitor, RateMeter, evaluate_progress
from streamclf.service.notify import SystemdNotifier
from streamclf.service.reload import plan_reload
from streamclf.status import InferenceStatus
from tests.conftest import REPO, base_config, daemon_env, wait_until, write_config
from tests.servers import MosquittoBroker, MqttCollector, free_port, make_video, read_retained

UNIT = REPO / "systemd" / "streamclf.service"
SERVE_UNIT = REPO / "systemd" / "streamclf-serve.service"  # streamclf serve: the model on Triton


# --------------------------------------------------------------------------- helpers

class NotifyListener:
    """A unix datagram socket standing in for systemd: records (monotonic time, message) pairs."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def having(self, key: str) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, m) for t, m in self.messages if any(line.startswith(key) for line in m.split("\n"))]

    def wait_for(self, key: str, count: int = 1, timeout: float = 30.0) -> list[tuple[float, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.having(key)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{count}x {key!r} not received in {timeout}s; got {self.messages[-20:]}")

    def close(self):
        self._stop = True
        self._thread.join(1)
        self.sock.close()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (samples only)."""
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def wait_log(daemon, text: str, timeout: float = 30.0, count: int = 1) -> None:
    """Wait until ``text`` occurs ``count`` times in the daemon's output."""
    wait_until(lambda: daemon.output.count(text) >= count or daemon.proc.poll() is not None, timeout, repr(text))
    assert daemon.output.count(text) >= count, daemon.output[-4000:]


def colour_video(path, frames: int = 20, fps: int = 10):
    def colour(i: int) -> np.ndarray:
        img = np.zeros((120, 160, 3), np.uint8)
        img[:] = (0, 0, 255)
        img[:, (i * 7) % 160:] //= 2
        return img

    return make_video(path, frames, fps=fps, size=(160, 120), color_fn=colour)


# --------------------------------------------------------------------------- sd_notify

@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_datagrams_to_path_and_abstract_sockets(tmp_path, abstract):
    name = f"streamclf-test-{os.getpid()}-{time.monotonic_ns()}"
    bind, env_value = ("\0" + name, "@" + name) if abstract else (str(tmp_path / "notify.sock"),) * 2
    listener = NotifyListener(bind)
    try:
        n = SystemdNotifier({"NOTIFY_SOCKET": env_value})
        assert n.enabled
        assert n.ready("1/1 camera(s) online") and n.watchdog() and n.reloading() and n.stopping()
        n.close()
        listener.wait_for("STOPPING=1")
        got = [m for _, m in listener.messages]
        assert got[:2] == ["READY=1\nSTATUS=1/1 camera(s) online", "WATCHDOG=1"] and got[3] == "STOPPING=1"
        reloading, monotonic = got[2].split("\n")
        assert reloading == "RELOADING=1" and monotonic.startswith("MONOTONIC_USEC=")
        assert abs(int(monotonic.split("=")[1]) - time.monotonic() * 1e6) < 5e6  # CLOCK_MONOTONIC, microseconds
    finally:
        listener.close()


@pytest.mark.parametrize(
    "env, enabled, interval_s",
    [
        ({}, False, None),  # not under systemd: every call is a no-op
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, True, None),
        ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}, True, 15.0),  # ping at half the timeout
        ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, True, None),  # for another process
        ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "0"}, True, None),
        ({"NOTIFY_SOCKET": "relative/path"}, False, None),
    ],
)
def test_notifier_environment(env, enabled, interval_s):
    n = SystemdNotifier(env)
    assert n.enabled is enabled
    assert n.watchdog_interval_s == interval_s
    if not enabled:
        assert n.ready() is False and n.watchdog() is False


# --------------------------------------------------------------------------- progress rules

def _inference(alive=True, batch_started=None, last_progress=0.0, pending=0):
    return InferenceStatus(alive=alive, batch_started=batch_started, last_progress=last_progress, queue_depth=pending)


@pytest.mark.parametrize(
    "state, waiting_since, ok, reason",
    [
        (dict(last_progress=95.0), None, True, "classifying"),
        (dict(last_progress=0.0), None, True, "idle"),  # cameras offline or ended: nothing to do is fine
        (dict(last_progress=95.0, batch_started=99.0), None, True, "classifying"),  # a model call in flight
        (dict(last_progress=0.0, batch_started=50.0), None, False, "model call has been running for 50 s"),
        (dict(last_progress=0.0, pending=3), 0.0, False, "3 frame(s) waiting and none classified for 100 s"),
        (dict(last_progress=80.0, pending=3), 0.0, True, "classifying"),  # waiting, but not for long
        (dict(last_progress=0.0, pending=1), 99.9, True, "idle spell"),  # the first frame after a long idle spell
        (dict(alive=False, last_progress=99.0), None, False, "inference thread has stopped"),
    ],
)
def test_progress_rules(state, waiting_since, ok, reason):
    p = evaluate_progress(_inference(**state), stall_timeout_s=30, now=100.0, waiting_since=waiting_since)
    assert p.ok is ok and reason in p.reason


def test_progress_monitor_remembers_since_when_frames_wait():
    monitor = ProgressMonitor()
    assert monitor.check(_inference(last_progress=0.0), 30, now=100.0).ok  # idle
    waiting = _inference(last_progress=0.0, pending=1)
    assert monitor.check(waiting, 30, now=101.0).ok  # a frame arrives after 100 s of nothing: not a stall
    assert monitor.check(waiting, 30, now=120.0).ok
    assert not monitor.check(waiting, 30, now=131.5).ok  # ... but nobody took it for 30 s: stalled
    assert monitor.check(_inference(last_progress=131.6, pending=1), 30, now=132.0).ok


def test_rate_meter_counts_per_second_over_its_window():
    m = RateMeter(window_s=10)
    for t in range(0, 31):
        m.update(t * 5, now=float(t))
    assert m.rate == pytest.approx(5.0)
    assert RateMeter().rate == 0.0


# --------------------------------------------------------------------------- credentials

@pytest.mark.parametrize(
    "files, env_dir, expected, error",
    [
        ({"mqtt_password": "s3cret\n"}, True, "s3cret", None),  # trailing newline from `echo` is not the password
        ({}, True, None, "credential 'mqtt_password' cannot be read from"),
        ({"mqtt_password": "x"}, False, None, "$CREDENTIALS_DIRECTORY is not set"),
    ],
)
def test_password_credential(tmp_path, files, env_dir, expected, error):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)} if env_dir else {}
    cfg = MqttConfig(username="u", password_credential="mqtt_password")
    if error:
        with pytest.raises(ValueError) as exc:
            cfg.resolve_password(env)
        assert error in str(exc.value) and "mqtt_password" in str(exc.value)
    else:
        assert cfg.resolve_password(env) == expected


def test_missing_credential_is_a_config_error_with_key_and_line(tmp_path):
    text = ("mqtt:\n  username: u\n  password_credential: mqtt_password\n"
            "labels: {a: {}, b: {}}\ncameras: {c: {source: x.mp4}}\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "c.yaml", env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    [problem] = exc.value.problems
    assert problem.path == "mqtt.password_credential" and problem.line == 3
    assert "'mqtt_password' cannot be read" in problem.message and "LoadCredential=mqtt_password" in problem.message
    with pytest.raises(ConfigError, match="password or password_credential, not both"):
        parse_config(text.replace("  username: u\n", "  password: p\n"), "c.yaml", env={})


# --------------------------------------------------------------------------- reload plans

def _cfg(**changes):
    base = {
        "model": {"name": "m"},
        "labels": {"a": {"threshold": 0.5}, "b": {}, "bg": {"background": True}},
        "cameras": {"one": {"source": "1.mp4"}, "two": {"source": "2.mp4", "labels": ["a", "bg"]}},
    }
    for key, value in changes.items():
        base[key] = value
    return parse_config(yaml.safe_dump(base), env={})


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, {}),
        ({"labels": {"a": {"threshold": 0.7}, "b": {}, "bg": {"background": True}}}, {"labels_changed": True}),
        ({"labels": {"a": {}, "b": {}, "bg": {"background": True}, "c": {}}},
         {"labels_changed": True, "reencode_labels": True}),
        ({"cameras": {"one": {"source": "1.mp4", "fps": 5}, "three": {"source": "3.mp4"}}},
         {"cameras_added": ("three",), "cameras_removed": ("two",), "cameras_restarted": ("one",),
          "labels_changed": False}),
        ({"cameras": {"one": {"source": "1.mp4"}, "two": {"source": "2.mp4", "labels": ["b", "bg"]}}},
         {"labels_changed": True}),  # a camera's label list: rescored, not restarted
        ({"cameras": {"one": {"source": "1.mp4", "zones": {"door": {"box": [0, 0, 0.5, 1]}},
                              "label_overrides": {"a": {"threshold": 0.9}}},
                      "two": {"source": "2.mp4", "labels": ["a", "bg"]}}},
         {"labels_changed": True, "cameras_restarted": ()}),  # zones and overrides: decided anew, not restarted
        ({"cameras": {"one": {"source": "1.mp4", "enabled": False}, "two": {"source": "2.mp4", "labels": ["a", "bg"]}}},
         {"cameras_restarted": ("one",)}),
        ({"events": {"snapshots": {"quality": 50}}}, {"labels_changed": True, "snapshots_changed": True}),
        ({"mqtt": {"port": 1884}}, {"mqtt_changed": True}),
        ({"model": {"name": "m", "batch_size": 2}}, {"restart_needed": ("model.batch_size",)}),
        ({"mqtt": {"topic_prefix": "other"}}, {"restart_needed": ("mqtt.topic_prefix",), "mqtt_changed": False}),
        ({"mqtt": {"topic_prefix": "other", "keepalive_s": 10}},
         {"restart_needed": ("mqtt.topic_prefix",), "mqtt_changed": True}),
        ({"homeassistant": {"enabled": False}}, {"restart_needed": ("homeassistant.enabled",)}),
        ({"metrics": {"enabled": True}}, {"metrics_changed": True}),
    ],
)
def test_reload_plan(changes, expected):
    plan = plan_reload(_cfg(), _cfg(**changes))
    for key, value in expected.items():
        assert getattr(plan, key) == value, key
    assert plan.empty is (not expected or not any(expected.values()))


# --------------------------------------------------------------------------- the unit file

@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("path", [UNIT, SERVE_UNIT], ids=lambda p: p.name)
def test_unit_file_verifies(tmp_path, path):
    # verify checks that ExecStart= exists; point it at an executable that does.
    text = path.read_text().replace("/opt/streamclf/.venv/bin/streamclf", shutil.which("true"))
    unit = tmp_path / path.name
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "streamclf" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def _systemd_version() -> int:
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(out.split()[1]) if out.startswith("systemd ") else 0


def _unit_settings(path) -> dict[str, list[str]]:
    """Each active ``Key=`` of a unit file and its values, in order (comments and sections left out)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";", "[")):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_serve_unit_runs_streamclf_serve_as_a_notify_service():
    from streamclf.cli import _parser

    unit = _unit_settings(SERVE_UNIT)
    (exec_start,) = unit["ExecStart"]
    program, *argv = exec_start.split()
    assert program == "/opt/streamclf/.venv/bin/streamclf"
    args = _parser().parse_args(argv)
    assert args.command == "serve" and args.config == "/etc/streamclf/serve.yaml"
    # What streamclf serve relies on: sd_notify from the main process, PyTriton's workspace under
    # $CACHE_DIRECTORY (not /run, which is noexec: tritonserver runs from its copy), the GPU's devices.
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"] and unit["WatchdogSec"] == ["60"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["CacheDirectory"] == ["streamclf"] and "RuntimeDirectory" not in unit
    assert {"char-nvidia-frontend rw", "char-nvidia-uvm rw"} <= set(unit["DeviceAllow"])
    # The same hardening as the daemon's unit, line for line, but for the devices a server does not open.
    daemon = _unit_settings(UNIT)
    for key in ("NoNewPrivileges", "CapabilityBoundingSet", "ProtectSystem", "ProtectHome", "PrivateTmp",
                "RestrictAddressFamilies", "SystemCallFilter", "DevicePolicy", "DynamicUser", "UMask"):
        assert unit[key] == daemon[key], key


def test_the_serve_config_in_docs_service_md_loads(tmp_path):
    from streamclf.config import load_serve_config

    text = (REPO / "docs" / "service.md").read_text()
    block = text.split("# /etc/streamclf/serve.yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "serve.yaml"
    path.write_text(block)
    cfg = load_serve_config(path)
    assert cfg.model.device == "cuda" and cfg.serve.grpc_port == 8001


def test_unit_starts_without_a_password_file():
    # An active LoadCredential= whose file is missing stops the service before it runs
    # (status=243/CREDENTIALS): the credential belongs in the mqtt-password.conf drop-in.
    active = [line for line in UNIT.read_text().splitlines() if line.startswith("LoadCredential")]
    assert active == []
    drop_in = (UNIT.parent / "mqtt-password.conf").read_text()
    assert "LoadCredential=mqtt_password:/etc/streamclf/mqtt_password" in drop_in


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("drop_in", ["mqtt-password.conf", "notify-reload.conf"])
def test_drop_ins_verify_with_the_unit(tmp_path, drop_in):
    unit = tmp_path / "streamclf.service"
    unit.write_text(UNIT.read_text().replace("/opt/streamclf/.venv/bin/streamclf", shutil.which("true")))
    (tmp_path / "streamclf.service.d").mkdir()
    shutil.copy(UNIT.parent / drop_in, tmp_path / "streamclf.service.d" / drop_in)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "streamclf" in line]
    if drop_in == "notify-reload.conf" and _systemd_version() < 253:
        # systemd 252 ignores this type: why the drop-in is optional and not part of the unit.
        assert any("notify-reload" in line for line in problems), r.stdout + r.stderr
    else:
        assert r.returncode == 0 and not problems, r.stdout + r.stderr


# --------------------------------------------------------------------------- the daemon under "systemd"

@pytest.mark.slow
def test_notify_ready_status_watchdog_then_a_stalled_pipeline_stops_the_pings(tmp_path, broker, prefix, tiny_clip_dir,
                                                                                start_daemon):
    video = colour_video(tmp_path / "v.mp4")
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    try:
        cfg = base_config(tiny_clip_dir, broker, prefix,
                          {"cam": {"source": str(video), "fps": 10, "realtime": True, "loop": True}},
                          service={"stall_timeout_s": 1.5})
        env = daemon_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000",
                         STREAMCLF_TEST_STALL_AFTER_BATCHES="25")
        daemon = start_daemon(cfg, env=env, module="tests.stalling_daemon")
        [(t_ready, ready)] = listener.wait_for("READY=1", timeout=60)
        assert "STATUS=" in ready and "camera(s) online" in ready
        listener.wait_for("STATUS=", count=2, timeout=20)  # READY's own, then a live one
        assert any("frames/s classified" in m for _, m in listener.having("STATUS="))

        # Pings every half WATCHDOG_USEC while frames are classified ...
        wait_log(daemon, "not making progress", timeout=60)
        t_stalled = time.monotonic()
        pings = [t for t, _ in listener.having("WATCHDOG=1")]
        assert len(pings) >= 3, listener.messages
        gaps = np.diff(pings)
        assert gaps.max() < 2.0, gaps  # 0.5 s interval, a 0.2 s tick; slack for a loaded CI machine
        # ... and none once the inference thread hangs: systemd (WatchdogSec=1) would now restart us.
        time.sleep(3)
        assert all(t <= t_stalled + 0.3 for t, _ in listener.having("WATCHDOG=1")), listener.messages[-10:]
        assert any("NOT PROGRESSING" in m for _, m in listener.having("STATUS="))
        assert "test fault: the model call stalls now" in daemon.output
        assert daemon.proc.poll() is None

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        listener.wait_for("STOPPING=1", timeout=5)
    finally:
        listener.close()


def _count(collector, prefix: str, camera: str, label: str) -> int:
    return sum(1 for d in collector.json_messages(f"{prefix}/{camera}/detection") if d["label"] == label)


@pytest.mark.slow
def test_metrics_and_stats_agree_with_what_reached_the_broker(tmp_path, broker, prefix, collector, tiny_clip_dir,
                                                              start_daemon):
    video = colour_video(tmp_path / "v.mp4", frames=12)  # fewer than the batcher holds: nothing can be dropped
    port = free_port()
    cameras = {
        "a": {"source": str(video), "fps": 10, "realtime": False},
        # Nothing listens there: keeps the daemon running after the file ends, and counts reconnects.
        "gone": {"source": f"rtsp://user:pw@127.0.0.1:{free_port()}/x", "fps": 1},
    }
    cfg = base_config(tiny_clip_dir, broker, prefix, cameras, metrics={"enabled": True, "port": port},
                      service={"stats_interval_s": 0.5})
    daemon = start_daemon(cfg)
    collector.wait_for(lambda m: _count(collector, prefix, "a", "red_thing") >= 12
                       and _count(collector, prefix, "a", "blue_thing") >= 12, timeout=60)
    m = wait_until(lambda: (s := scrape(port)).get('streamclf_camera_reconnects_total{camera="gone"}', 0) >= 1
                   and s['streamclf_camera_state{camera="a",state="ended"}'] == 1 and s, 30, "the file to end")

    a = '{camera="a"}'
    assert m[f"streamclf_frames_captured_total{a}"] == 12
    assert m[f"streamclf_frames_sampled_total{a}"] == 12
    assert m[f"streamclf_frames_classified_total{a}"] == 12
    assert not [k for k in m if k.startswith("streamclf_frames_dropped_total")]
    for label in ("red_thing", "blue_thing"):
        assert m[f'streamclf_detections_published_total{{camera="a",label="{label}"}}'] == 12 \
            == _count(collector, prefix, "a", label)
    assert not [k for k in m if 'label="nothing"' in k]  # background labels are never published
    events = collector.json_messages(f"{prefix}/a/event")
    for label in ("red_thing", "blue_thing"):
        assert m[f'streamclf_events_published_total{{camera="a",label="{label}"}}'] \
            == sum(1 for e in events if e["label"] == label) >= 1
    assert m["streamclf_batch_size_frames_sum"] == 12
    assert m["streamclf_batch_size_frames_count"] == m["streamclf_inference_duration_seconds_count"] \
        == m["streamclf_batches_total"] >= 3
    assert m["streamclf_frame_age_seconds_count"] == 12
    assert m["streamclf_mqtt_connected"] == 1 and m["streamclf_mqtt_dropped_messages_total"] == 0
    assert m['streamclf_camera_online{camera="gone"}'] == 0
    assert m['streamclf_camera_state{camera="gone",state="offline"}'] == 1
    assert m["streamclf_queue_depth_frames"] == 0
    assert m["streamclf_progressing"] == 1  # a camera that cannot connect is not a hung pipeline
    status, body = http_get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok", body

    # <prefix>/stats carries the same figures.
    collector.wait_for(
        lambda msgs: any(s["frames_classified"] == 12 for s in collector.json_messages(f"{prefix}/stats")), timeout=10)
    stats = [s for s in collector.json_messages(f"{prefix}/stats") if s["frames_classified"] == 12][-1]
    assert stats["cameras"]["a"] == {"state": "ended", "frames_captured": 12, "frames_sampled": 12,
                                     "frames_classified": 12, "frames_dropped": {}, "reconnects": 0}
    assert stats["detections_published"]["a"] == {"red_thing": 12, "blue_thing": 12}
    assert stats["cameras"]["gone"]["state"] == "offline" and stats["cameras"]["gone"]["reconnects"] >= 1
    assert stats["mqtt"]["connected"] is True and stats["healthy"] is True
    assert "pw@" not in daemon.output and not [p for _, p, _ in collector.all if b"pw@" in p]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0


@pytest.mark.slow
def test_healthz_follows_the_broker_and_the_password_comes_from_a_credential(tmp_path, prefix, tiny_clip_dir,
                                                                            start_daemon):
    video = colour_video(tmp_path / "v.mp4")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt_password").write_text("hunter2\n")
    port = free_port()
    with MosquittoBroker(username="streamclf", password="hunter2") as own:
        cfg = base_config(tiny_clip_dir, own, prefix, {"cam": {"source": str(video), "fps": 5, "loop": True}},
                          mqtt={"username": "streamclf", "password_credential": "mqtt_password"},
                          metrics={"enabled": True, "port": port})
        daemon = start_daemon(cfg, env=daemon_env(CREDENTIALS_DIRECTORY=str(creds)))
        with MqttCollector(own.host, own.port, f"{prefix}/#", username="streamclf", password="hunter2") as coll:
            coll.wait_for(lambda m: len(coll.json_messages(f"{prefix}/cam/detection")) >= 4, timeout=60)
        healthz = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: http_get(healthz)[0] == 200, 10, "/healthz 200")
        before = scrape(port)['streamclf_frames_classified_total{camera="cam"}']

        own.stop()
        status, body = wait_until(lambda: (r := http_get(healthz))[0] == 503 and r, 20, "/healthz 503")
        reply = json.loads(body)
        assert reply["status"] == "unhealthy" and reply["mqtt_connected"] is False
        assert any("MQTT broker not connected" in r for r in reply["reasons"]), reply
        assert reply["progress"] == "classifying"  # frames keep flowing; only the broker is missing
        assert scrape(port)["streamclf_mqtt_connected"] == 0

        own.start()
        wait_until(lambda: http_get(healthz)[0] == 200, 30, "/healthz 200 after the broker is back")
        after = scrape(port)
        assert after['streamclf_frames_classified_total{camera="cam"}'] > before
        assert after["streamclf_mqtt_connects_total"] >= 2
        assert "hunter2" not in daemon.output
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0


def _json_lines(daemon) -> list[dict]:
    lines = [line for line in daemon.output.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object (no OpenCV noise: files only)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in parsed)
    return parsed


@pytest.mark.slow
def test_sighup_applies_a_changed_config_and_rejects_an_invalid_one(tmp_path, broker, prefix, collector, tiny_clip_dir,
                                                                   start_daemon):
    video = colour_video(tmp_path / "v.mp4")
    labels = {
        "red_thing": {"prompts": ["a red object"], "threshold": 0.0},
        "blue_thing": {"prompts": ["a blue object"], "threshold": 1.0},  # never reached: not published
        "nothing": {"prompts": ["an empty scene"], "background": True},
    }
    cams = {"cam": {"source": str(video), "fps": 5, "loop": True}}
    cfg = base_config(tiny_clip_dir, broker, prefix, cams, labels=labels)
    daemon = start_daemon(cfg, args=("--log-format", "json"))
    path = tmp_path / "config0.yaml"
    collector.wait_for(lambda m: _count(collector, prefix, "cam", "red_thing") >= 3, timeout=60)
    assert _count(collector, prefix, "cam", "blue_thing") == 0

    # A label added, a threshold lowered, a camera added, a model setting changed.
    new_labels = {**labels, "blue_thing": {"prompts": ["a blue object"], "threshold": 0.0},
                  "green_thing": {"prompts": ["a green object"], "threshold": 0.0}}
    new_cams = {**cams, "cam2": {"source": str(video), "fps": 2, "loop": True}}
    write_config(path, base_config(tiny_clip_dir, broker, prefix, new_cams, labels=new_labels,
                                   model={"batch_size": 2}))
    daemon.signal(signal.SIGHUP)
    wait_log(daemon, "config reloaded")
    collector.wait_for(lambda m: _count(collector, prefix, "cam", "green_thing") >= 2
                       and _count(collector, prefix, "cam", "blue_thing") >= 2
                       and _count(collector, prefix, "cam2", "green_thing") >= 2, timeout=30)
    latest = collector.json_messages(f"{prefix}/cam/detection")[-1]
    assert set(latest["scores"]) == {"red_thing", "blue_thing", "green_thing", "nothing"}
    records = _json_lines(daemon)
    [reloaded] = [r for r in records if r["message"].startswith("config reloaded")]
    assert "cameras added: cam2" in reloaded["message"] and "labels re-encoded" in reloaded["message"]
    assert "restarted" not in reloaded["message"]  # cam itself kept running
    assert any("model.batch_size" in r["message"] and "restart" in r["message"] and r["level"] == "warning"
               for r in records)
    assert any(r.get("camera") == "cam2" and "started" in r["message"] for r in records)

    # An invalid config: rejected with its errors, the running one stays.
    path.write_text(path.read_text().replace("    fps: 2\n", "    fps: 2\n    colour: red\n"))
    daemon.signal(signal.SIGHUP)
    wait_log(daemon, "config reload rejected")
    [rejected] = [r for r in _json_lines(daemon) if "reload rejected" in r["message"]]
    assert rejected["level"] == "error"
    assert "cameras.cam2.colour: unknown key" in rejected["message"] and "line " in rejected["message"]
    n = len(collector.json_messages(f"{prefix}/cam2/detection"))
    collector.wait_for(lambda m: len(collector.json_messages(f"{prefix}/cam2/detection")) >= n + 2, timeout=20)
    assert daemon.proc.poll() is None

    # A removed camera stops and is marked offline; the others go on.
    write_config(path, base_config(tiny_clip_dir, broker, prefix, cams, labels=new_labels))
    collector.clear()
    daemon.signal(signal.SIGHUP)
    wait_log(daemon, "config reloaded", count=2)
    collector.wait_for(lambda m: any(t == f"{prefix}/cam2/status" and p == b"offline" for t, p, _ in m), timeout=10)
    collector.clear()  # after the offline status, nothing of cam2 may follow
    collector.wait_for(lambda m: len(collector.json_messages(f"{prefix}/cam/detection")) >= 6, timeout=20)
    assert not collector.json_messages(f"{prefix}/cam2/detection")
    [removed] = [r for r in _json_lines(daemon) if r["message"].startswith("config reloaded")][1:]
    assert "cameras removed: cam2" in removed["message"]

    # MQTT settings: the publisher reconnects in place; a new topic prefix waits for a restart.
    collector.clear()
    write_config(path, base_config(tiny_clip_dir, broker, prefix, cams, labels=new_labels,
                                   mqtt={"keepalive_s": 10, "client_id": f"{prefix}-reloaded",
                                         "topic_prefix": f"{prefix}b"}))
    daemon.signal(signal.SIGHUP)
    wait_log(daemon, "config reloaded", count=3)
    wait_log(daemon, "MQTT connected", count=2)
    collector.wait_for(lambda m: len(collector.json_messages(f"{prefix}/cam/detection")) >= 4, timeout=20)
    assert any(t == f"{prefix}/available" and p == b"online" for t, p, _ in collector.all)
    assert read_retained(broker.host, broker.port, f"{prefix}/available") == b"online"
    records = _json_lines(daemon)
    assert "MQTT reconnected" in [r for r in records if r["message"].startswith("config reloaded")][2]["message"]
    assert any("mqtt.topic_prefix" in r["message"] and "restart" in r["message"] for r in records)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("path", [UNIT, SERVE_UNIT], ids=lambda p: p.name)
def test_unit_file_security_exposure_stays_low(tmp_path, path):
    unit = tmp_path / path.name
    unit.write_text(path.read_text().replace("/opt/streamclf/.venv/bin/streamclf", shutil.which("true")))
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    if "--offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    # Exposure is 0..10 (the threshold 0..100): 2.0 or less is systemd's "OK" band.
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert f"Overall exposure level for {path.name}" in r.stdout
