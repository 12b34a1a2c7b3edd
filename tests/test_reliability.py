"""Reliability as a specification: cameras and brokers fail for real and streamclf keeps going.

The first part drives single pieces (batcher, probe, a live camera with a capture that
hangs) in-process. The second runs ``streamclf run`` as a subprocess against a real
mosquitto and a real GStreamer RTSP server, and kills, freezes and restarts them.
Timeouts in the test configs are short (seconds) so that every fault plays out quickly.
"""

from __future__ import annotations

import http.server
import json
import re
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from streamclf.batching import Batcher, DropPolicy
from streamclf.capture import CameraState, CameraStatus, LiveCamera, ffmpeg_capture_options, probe_stream
from streamclf.config import CameraConfig, ConfigError, parse_config
from streamclf.entities import Frame
from tests.conftest import base_config, needs_rtsp, wait_until
from tests.servers import MosquittoBroker, MqttCollector, RtspServer, free_port, make_video, read_retained

IMG = np.zeros((8, 8, 3), np.uint8)

# Live-camera settings that make every fault play out in a few seconds.
FAST = {
    "open_timeout_s": 2,
    "read_timeout_s": 2,
    "stall_timeout_s": 2,
    "reconnect_backoff_initial_s": 0.2,
    "reconnect_backoff_max_s": 1,
}


# --------------------------------------------------------------------------- helpers
@contextmanager
def silent_server():
    """A TCP port that accepts connections and never sends a byte; yields the port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept():
        while not done.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        done.set()
        t.join(1)
        for s in held:
            s.close()
        srv.close()


@contextmanager
def web_page_server():
    """An HTTP server that answers every GET with a small HTML page (not a video stream); yields the port."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>not a camera</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def colour_video(path: Path, frames: int, fps: int = 10) -> Path:
    def colour(i: int) -> np.ndarray:
        img = np.zeros((120, 160, 3), np.uint8)
        img[:] = (0, 0, 255)
        img[:, (i * 7) % 160 :] //= 2  # keep frames distinct
        return img

    return make_video(path, frames, fps=fps, size=(160, 240 // 2), color_fn=colour)


def one_label_per_frame() -> dict:
    """Labels that give exactly one detection per classified frame (threshold 0 plus a background)."""
    return {"thing": {"prompts": ["a red object"], "threshold": 0.0},
            "nothing": {"prompts": ["an empty scene"], "background": True}}


def detections(collector: MqttCollector, camera: str) -> list[dict]:
    return collector.json_messages(f"+/{camera}/detection")


def statuses(collector: MqttCollector, camera: str) -> list[bytes]:
    return [p for _, p, _ in collector.messages(f"+/{camera}/status")]


def details(collector: MqttCollector, camera: str) -> list[dict]:
    return collector.json_messages(f"+/{camera}/status/detail")


def last_status(collector: MqttCollector, camera: str) -> bytes | None:
    s = statuses(collector, camera)
    return s[-1] if s else None


# --------------------------------------------------------------------------- config
def test_camera_reliability_settings_have_defaults_and_are_validated():
    cam = CameraConfig(source="rtsp://cam.local/stream")
    assert (cam.open_timeout_s, cam.read_timeout_s, cam.rtsp_transport) == (10.0, 10.0, "tcp")
    assert (cam.reconnect_backoff_initial_s, cam.reconnect_backoff_max_s, cam.stall_timeout_s) == (1.0, 30.0, 20.0)
    assert cam.effective_max_frame_age_s == 10.0
    # A batch job over a file drops nothing, so no stale limit applies to it.
    assert CameraConfig(source="a.mp4", realtime=False).effective_max_frame_age_s is None
    assert CameraConfig(source="a.mp4", realtime=True, max_frame_age_s=2).effective_max_frame_age_s == 2


@pytest.mark.parametrize(
    "camera_yaml, message",
    [
        ("rtsp_transport: http", "cameras.c.rtsp_transport"),
        ("stall_timeout_s: 0", "cameras.c.stall_timeout_s"),
        ("reconnect_backoff_initial_s: 5\n    reconnect_backoff_max_s: 1",
         "must be at least reconnect_backoff_initial_s"),
        ("stall_timeout: 5", "unknown key"),
    ],
)
def test_bad_reliability_settings_are_errors_with_their_key(camera_yaml, message):
    text = f"labels: {{a: {{}}, b: {{}}}}\ncameras:\n  c:\n    source: rtsp://x/y\n    {camera_yaml}\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text, env={})
    assert message in str(exc.value)


def test_each_camera_transport_is_merged_into_the_users_ffmpeg_options():
    assert ffmpeg_capture_options("tcp") == "rtsp_transport;tcp|analyzeduration;1000000"
    assert ffmpeg_capture_options("udp", "rtsp_transport;tcp|analyzeduration;100000") == (
        "rtsp_transport;udp|analyzeduration;100000"
    )


# --------------------------------------------------------------------------- batcher
def test_max_frame_age_is_per_camera():
    now = [100.0]
    b = Batcher(batch_size=8, max_batch_wait_s=0, clock=lambda: now[0],
                max_frame_age_by_camera={"live": 1.0, "quiet": 30.0, "batch": None})
    for cam in ("live", "quiet", "batch"):
        b.put(Frame(cam, IMG, 0, 0.0, 95.0), DropPolicy.DROP_OLDEST)  # captured 5 s ago
    assert [f.camera for f in b.next_batch(timeout=0)] == ["quiet", "batch"]
    assert b.drop_counts() == {"live": {"stale": 1}}


# --------------------------------------------------------------------------- probe
def test_probe_reports_closed_silent_and_wrong_servers_quickly():
    closed = free_port()
    assert "cannot connect to 127.0.0.1" in probe_stream(f"rtsp://u:pw@127.0.0.1:{closed}/cam", 1.0)
    with silent_server() as port:
        t0 = time.monotonic()
        problem = probe_stream(f"rtsp://u:pw@127.0.0.1:{port}/cam", 0.5)
        assert "accepted the connection but sent nothing within 0.5 s" in problem
        assert time.monotonic() - t0 < 2
    with web_page_server() as port:
        assert "is not an RTSP server" in probe_stream(f"rtsp://127.0.0.1:{port}/cam", 1.0)
        assert probe_stream(f"http://127.0.0.1:{port}/", 1.0) is None  # an HTTP server: OpenCV decides
    assert probe_stream("/some/file.mp4", 1.0) is None


# --------------------------------------------------------------------------- live camera with a hanging capture
class HangingCapture:
    """A capture that delivers ``frames`` frames, then blocks in grab() until ``release_reads`` is set."""

    def __init__(self, frames: int, release_reads: threading.Event):
        self.left = frames
        self.release_reads = release_reads
        self.released = False

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 8.0  # width and height

    def grab(self) -> bool:
        if self.left > 0:
            self.left -= 1
            time.sleep(0.02)
            return True
        self.release_reads.wait()  # like FFmpeg after a disconnect on some builds: no timeout
        return False

    def retrieve(self):
        return True, np.zeros((8, 8, 3), np.uint8)

    def release(self) -> None:
        self.released = True


def test_watchdog_reopens_a_stream_whose_read_never_returns():
    unblock = threading.Event()
    opened: list[HangingCapture] = []
    seen: list[CameraStatus] = []

    def open_source(source, open_timeout_s, read_timeout_s, transport, started, decode_threads=0):
        started()
        opened.append(HangingCapture(5, unblock))
        return opened[-1]

    cfg = CameraConfig(source="rtsp://cam/x", fps=100, **{**FAST, "stall_timeout_s": 0.5})
    batcher = Batcher(batch_size=64, max_batch_wait_s=1, max_pending=64)
    cam = LiveCamera("hang", cfg, batcher, seen.append, "rtsp://cam/x", open_source=open_source,
                     probe=lambda u, t: None)
    cam.start()
    try:
        wait_until(lambda: any(s.state is CameraState.ONLINE for s in seen), 5, "online")
        t_online = time.monotonic()
        offline = wait_until(lambda: [s for s in seen if s.state is CameraState.OFFLINE], 5, "offline")[0]
        assert time.monotonic() - t_online < 0.5 + 1.0  # stall_timeout_s plus a margin
        assert offline.reason == "stalled" and "no frame for" in offline.last_error
        assert offline.reconnect_attempts == 1
        # A fresh capture replaces the stuck one, which is left alone: releasing it while it is
        # inside grab() could crash OpenCV.
        wait_until(lambda: len(opened) >= 2 and sum(s.state is CameraState.ONLINE for s in seen) >= 2, 5, "reopened")
        assert not opened[0].released
    finally:
        t0 = time.monotonic()
        cam.stop()
        cam.join(2)
        assert not cam.thread_alive and time.monotonic() - t0 < 1.0  # stop never waits on a stuck read
        unblock.set()
    wait_until(lambda: opened[0].released, 2, "the abandoned capture to be released by its own thread")


def test_an_open_that_never_returns_is_abandoned_and_retried_with_capped_backoff():
    never = threading.Event()
    calls: list[float] = []

    def open_source(source, open_timeout_s, read_timeout_s, transport, started, decode_threads=0):
        started()
        calls.append(time.monotonic())
        if len(calls) == 1:
            never.wait()  # a hung open, beyond FFmpeg's timeout
        raise RuntimeError("cannot open rtsp://admin:hunter2@cam/x")

    seen: list[CameraStatus] = []
    cfg = CameraConfig(source="rtsp://cam/x", open_timeout_s=0.3, stall_timeout_s=0.3,
                       reconnect_backoff_initial_s=0.05, reconnect_backoff_max_s=0.2)
    cam = LiveCamera("stuck", cfg, Batcher(2, 1), seen.append, "rtsp://cam/x",
                     open_source=open_source, probe=lambda u, t: None)
    cam.start()
    try:
        wait_until(lambda: len(calls) >= 6, 10, "six open attempts")
    finally:
        cam.stop()
        cam.join(2)
        never.set()
    first = next(s for s in seen if s.state is CameraState.OFFLINE)
    assert first.reason == "open hung" and first.reconnect_attempts == 1
    later = [s for s in seen if s.state is CameraState.OFFLINE][1:]
    assert later and all(s.reason == "capture failed" for s in later)
    assert all("hunter2" not in s.last_error and "***@" in s.last_error for s in later)
    assert [s.reconnect_attempts for s in seen if s.state is CameraState.OFFLINE][:4] == [1, 2, 3, 4]
    gaps = [b - a for a, b in zip(calls[1:], calls[2:], strict=False)]
    assert gaps[0] < gaps[-1] < 0.2 + 0.3  # exponential, then capped at reconnect_backoff_max_s


# --------------------------------------------------------------------------- the daemon, real servers
@needs_rtsp
@pytest.mark.slow
def test_rtsp_camera_that_freezes_or_dies_goes_offline_and_recovers_while_another_keeps_publishing(
    tmp_path, broker, prefix, collector, tiny_clip_dir, start_daemon
):
    steady = colour_video(tmp_path / "steady.mp4", 20)
    with RtspServer(fps=10) as rtsp:
        cameras = {
            # read_timeout_s is long on purpose: only the stall watchdog can notice a frozen server in time.
            "live": {"source": rtsp.url, "fps": 4, **FAST, "read_timeout_s": 60},
            "steady": {"source": str(steady), "fps": 5, "loop": True},
        }
        daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras, labels=one_label_per_frame()))
        collector.wait_for(lambda m: len(detections(collector, "live")) >= 3
                           and last_status(collector, "live") == b"online", timeout=40)

        # 1. The server freezes (SIGSTOP): the TCP connection stays open, read() just waits.
        rtsp.freeze()
        t_freeze = time.monotonic()
        collector.wait_for(lambda m: last_status(collector, "live") == b"offline", timeout=10)
        assert time.monotonic() - t_freeze < 2 + 2.0  # stall_timeout_s plus a margin
        # The detail is published just after the status, on the same connection: wait for it, don't race it.
        collector.wait_for(lambda m: details(collector, "live")[-1]["state"] == "offline", timeout=5)
        assert details(collector, "live")[-1]["reason"] == "stalled"
        steady_before = len(detections(collector, "steady"))
        time.sleep(1.5)
        rtsp.thaw()
        n_live = len(detections(collector, "live"))
        collector.wait_for(lambda m: last_status(collector, "live") == b"online"
                           and len(detections(collector, "live")) >= n_live + 2, timeout=20)
        assert len(detections(collector, "steady")) > steady_before  # never held up

        # 2. The server dies (SIGKILL) and comes back on the same port.
        rtsp.kill()
        t_kill = time.monotonic()
        collector.wait_for(lambda m: last_status(collector, "live") == b"offline", timeout=10)
        assert time.monotonic() - t_kill < 2 + 2.0
        steady_before = len(detections(collector, "steady"))
        time.sleep(2)
        down = details(collector, "live")[-1]
        assert down["state"] == "offline" and down["reason"] in ("stream lost", "stalled", "cannot connect")
        assert down["reconnect_attempts"] >= 1 and down["last_error"]
        assert read_retained(broker.host, broker.port, f"{prefix}/live/status") == b"offline"
        rtsp.start()
        n_live = len(detections(collector, "live"))
        collector.wait_for(lambda m: last_status(collector, "live") == b"online"
                           and len(detections(collector, "live")) >= n_live + 2, timeout=20)
        assert len(detections(collector, "steady")) > steady_before
        collector.wait_for(lambda m: details(collector, "live")[-1]["state"] == "online", timeout=5)
        assert details(collector, "live")[-1]["reconnect_attempts"] == 0
        assert read_retained(broker.host, broker.port, f"{prefix}/live/status") == b"online"

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(5) == 0, daemon.output
    assert "Traceback" not in daemon.output


@pytest.mark.slow
def test_bad_sources_never_block_start_up_or_the_other_cameras(tmp_path, broker, prefix, collector, tiny_clip_dir,
                                                               start_daemon):
    good = colour_video(tmp_path / "good.mp4", 20)
    full = make_video(tmp_path / "full.avi", 40, fps=10)
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    with silent_server() as silent, web_page_server() as web:
        live = {**FAST, "open_timeout_s": 3}
        cameras = {
            "good": {"source": str(good), "fps": 5, "loop": True},
            "closed": {"source": f"rtsp://127.0.0.1:{free_port()}/cam", **live},
            "silent": {"source": f"rtsp://admin:s3cret@127.0.0.1:{silent}/cam", **live},
            "webpage": {"source": f"http://127.0.0.1:{web}/index.html", **live},
            "garbage": {"source": f"rtsp://127.0.0.1:{web}/cam", **live},
            "truncated": {"source": str(truncated), "fps": 5, "realtime": False},
            "noise": {"source": str(noise), "fps": 5},
            # Every frame is older than 1 us by the time its batch runs (waking the inference thread alone
            # takes longer): counted as stale, never classified. A 1 ms limit was not: a frame that filled
            # the batch was now and then taken within 1 ms of its capture on CI.
            "stale": {"source": str(good), "fps": 5, "loop": True, "max_frame_age_s": 1e-6},
        }
        daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras, labels=one_label_per_frame()))
        expected = {
            "closed": ("offline", "cannot connect", "Connection refused"),
            "silent": ("offline", "cannot connect", "accepted the connection but sent nothing within 3 s"),
            "webpage": ("offline", "cannot open stream", "could not open http://127.0.0.1"),
            "garbage": ("offline", "cannot connect", "is not an RTSP server"),
            "truncated": ("ended", "file truncated or corrupt", "ended after 20 of 40 frames"),
            "noise": ("ended", "cannot decode file", "is not a video OpenCV/FFmpeg can read"),
        }

        def reported(m):
            return all(details(collector, c) and details(collector, c)[-1]["state"] == state
                       for c, (state, _, _) in expected.items())

        collector.wait_for(reported, timeout=40)
        # The good camera was online and publishing before the silent one had even timed out once.
        order = [(t.split("/")[1], json.loads(p)["state"]) for t, p, _ in collector.messages("+/+/status/detail")]
        assert order.index(("good", "online")) < order.index(("silent", "offline")), order
        for cam, (state, reason, error) in expected.items():
            d = details(collector, cam)[-1]
            assert (d["state"], d["reason"]) == (state, reason), d
            assert error in d["last_error"], d
            assert last_status(collector, cam) == b"offline"
        # Live sources are retried per their backoff; each problem is logged once, with the camera name.
        collector.wait_for(lambda m: all(details(collector, c)[-1]["reconnect_attempts"] >= 3
                                         for c in ("closed", "garbage")), timeout=20)
        n_good = len(detections(collector, "good"))
        collector.wait_for(lambda m: len(detections(collector, "good")) >= n_good + 5, timeout=10)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(5) == 0, daemon.output

    out = daemon.output
    for cam in expected:
        lines = [ln for ln in out.splitlines() if f"camera {cam}:" in ln and (" WARNING " in ln or " ERROR " in ln)]
        assert len(lines) == 1, (cam, lines)
    assert not detections(collector, "stale")
    assert re.search(r"camera stale: frames dropped since start: .*stale=\d+", out), out[-3000:]
    assert "s3cret" not in out and not [t for t, p, _ in collector.all if b"s3cret" in p]
    assert "Traceback" not in out


@pytest.mark.slow
def test_broker_outage_delivers_everything_queued_and_counts_what_overflowed(tmp_path, prefix, tiny_clip_dir,
                                                                             start_daemon):
    # 240 frames at 20 fps, paced like a camera and sampled at 10 fps: 120 detections over 12 s.
    video = colour_video(tmp_path / "v.avi", 240, fps=20)
    with MosquittoBroker() as b, MqttCollector(b.host, b.port, f"{prefix}/#") as collector:
        def run(name: str, max_queued: int):
            cfg = base_config(tiny_clip_dir, b, f"{prefix}/{name}", {"cam": {"source": str(video), "fps": 10}},
                              labels=one_label_per_frame(),
                              # two daemons on one broker need their own client ids, or each connect evicts the other
                              mqtt={"max_queued_messages": max_queued, "client_id": f"streamclf-{name}"})
            return start_daemon(cfg)

        roomy, small = run("roomy", 5000), run("small", 10)
        for name in ("roomy", "small"):
            collector.wait_for(lambda m, name=name: len(collector.json_messages(f"{prefix}/{name}/cam/detection")) >= 5,
                               timeout=40)

        before_outage = len(collector.all)
        b.stop()
        time.sleep(3)
        b.start()
        collector.wait_subscribed()  # before the daemons: paho's backoff has them retry 1, 2 and 4 s after the loss
        for name in ("roomy", "small"):
            # The broker forgot its retained messages (no persistence): streamclf publishes them again.
            collector.wait_for(lambda m, name=name: any(t == f"{prefix}/{name}/available" and p == b"online"
                                                         for t, p, _ in m[before_outage:]), timeout=15)
            assert read_retained(b.host, b.port, f"{prefix}/{name}/available") == b"online"
            assert read_retained(b.host, b.port, f"{prefix}/{name}/cam/status") == b"online"
        assert roomy.wait(40) == 0 and small.wait(20) == 0, roomy.output + small.output
        time.sleep(0.5)

        def received(name):
            return {d["frame_index"] for d in collector.json_messages(f"{prefix}/{name}/cam/detection")}

        def frames_dropped(output):  # a realtime file may lose a frame to a newer one when the CPU is busy
            line = re.search(r"camera cam: frames dropped since start: (.*)", output)
            return sum(int(n) for n in re.findall(r"=(\d+)", line.group(1))) if line else 0

        every = set(range(0, 240, 2))
        # Every sampled frame is accounted for: delivered, or counted as a drop with its reason.
        assert received("roomy") <= every
        assert len(received("roomy")) + frames_dropped(roomy.output) == len(every)  # nothing lost to the outage
        assert "outage queue was full" not in roomy.output
        missing = len(every) - frames_dropped(small.output) - len(received("small"))
        assert missing > 10
        # The overflow count, per topic: start-up messages (discovery, states) may overflow the tiny queue too.
        reported = re.search(r"MQTT: \d+ message\(s\) dropped since start because the outage queue was full.*"
                             rf"{prefix}/small/cam/detection=(\d+)", small.output)
        assert reported and int(reported.group(1)) == missing, small.output[-3000:]
        assert re.search(r"WARNING .*MQTT queue full \(10 messages, broker disconnected\)", small.output)


@pytest.mark.slow
def test_refused_connection_is_an_error_never_connected_and_a_second_sigint_exits_at_once(
    tmp_path, prefix, tiny_clip_dir, start_daemon
):
    video = colour_video(tmp_path / "v.mp4", 20)
    with MosquittoBroker(username="streamclf", password="right") as b:
        cfg = base_config(tiny_clip_dir, b, prefix, {"cam": {"source": str(video), "fps": 5, "loop": True}},
                          mqtt={"username": "streamclf", "password": "wrong"})
        daemon = start_daemon(cfg)
        wait_until(lambda: daemon.output.count("refused the connection") >= 2, 30, "two refused connections")
        # mosquitto answers a wrong password with MQTT 3.1.1 code 5, which paho reports as 135.
        assert re.search(r"ERROR .*MQTT broker 127\.0\.0\.1:\d+ refused the connection: "
                         r"Not authorized \(reason code 135\)", daemon.output)
        assert "MQTT connected" not in daemon.output
        assert read_retained(b.host, b.port, f"{prefix}/available", username="streamclf", password="right") is None
        assert "wrong" not in daemon.output

        # Nothing can be delivered, so the clean shutdown waits for its flush: a second SIGINT cuts it short.
        daemon.signal(signal.SIGINT)
        wait_until(lambda: "received SIGINT; shutting down" in daemon.output, 5, "the first SIGINT")
        t0 = time.monotonic()
        daemon.signal(signal.SIGINT)
        assert daemon.wait(2) == 130
        assert time.monotonic() - t0 < 1.0
        assert "second SIGINT: exiting at once" in daemon.output


@needs_rtsp
@pytest.mark.slow
def test_sigterm_exits_0_within_5_s_with_everything_offline(tmp_path, broker, prefix, collector, tiny_clip_dir,
                                                           start_daemon):
    video = colour_video(tmp_path / "v.mp4", 20)
    with RtspServer(fps=10) as rtsp, silent_server() as silent:
        cameras = {
            "live": {"source": rtsp.url, "fps": 2},  # connected and reading when the signal comes
            "opening": {"source": f"rtsp://127.0.0.1:{silent}/cam", "open_timeout_s": 60},  # stuck opening
            "file": {"source": str(video), "fps": 5, "loop": True},
        }
        daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras))
        collector.wait_for(lambda m: last_status(collector, "live") == b"online" and detections(collector, "file"),
                           timeout=40)
        time.sleep(0.5)
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(5) == 0, daemon.output
        assert time.monotonic() - t0 < 5
    for topic in ("available", "live/status", "opening/status", "file/status"):
        assert read_retained(broker.host, broker.port, f"{prefix}/{topic}") == b"offline", topic
    for cam in cameras:
        detail = json.loads(read_retained(broker.host, broker.port, f"{prefix}/{cam}/status/detail"))
        assert detail["state"] == "stopped", detail
    assert "Traceback" not in daemon.output
