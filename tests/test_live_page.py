"""The live page: its HTTP server's limits, its state, its API, and the page itself in a real Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.publish
import pytest

from streamclf.config import Config
from streamclf.decisions import Decisions, Event, EventType, StateChange
from streamclf.entities import Classification, Frame
from streamclf.service.http import HttpLimits, HttpServer
from streamclf.web.live import MAX_HISTORY_POINTS, LiveView
from tests.browser import Browser, have_browser
from tests.conftest import REPO, base_config, needs_rtsp, wait_until
from tests.servers import RtspServer, free_port, make_video

# -------------------------------------------------------------------------- helpers


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET; HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers.get("Content-Type", ""), e.read()


def get_json(port: int, path: str):
    status, _, body = get(port, path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def half_sent_request(port: int) -> socket.socket:
    """A connection that sends the start of a request and then nothing: a careless or hostile client."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    return s


def closed_by_server(s: socket.socket, timeout: float) -> bool:
    """True if the server answers (e.g. 503) and/or closes the connection within ``timeout`` seconds."""
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed too
    finally:
        s.close()


class SseClient:
    """Reads ``/api/stream`` in a thread and keeps each (event, data) it receives."""

    def __init__(self, port: int):
        self.response = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stream", timeout=10)
        self.messages: list[tuple[str, dict]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind = None
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: ") and kind:
                    self.messages.append((kind, json.loads(line[len("data: "):])))
        except (OSError, ValueError):
            pass

    def of(self, kind: str) -> list[dict]:
        return [d for k, d in self.messages if k == kind]

    def close(self) -> None:
        self.response.close()


# ------------------------------------------------------------ the HTTP server's limits


def test_http_server_refuses_connections_past_its_bound_and_closes_idle_ones():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    before = threading.active_count()
    server = HttpServer(app, "127.0.0.1", 0, HttpLimits(max_connections=3, idle_timeout_s=0.5)).start()
    try:
        idle = [half_sent_request(server.port) for _ in range(3)]
        wait_until(lambda: threading.active_count() >= before + 4, 5, "a thread per connection")
        # Every slot is taken: the next connection is answered 503 at once, not queued.
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        extra.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert extra.recv(4096).startswith(b"HTTP/1.0 503 ")
        extra.close()
        assert server.refused_connections == 1
        # The silent clients lose their connections (and threads) after the idle timeout.
        assert all(closed_by_server(s, timeout=5) for s in idle)
        wait_until(lambda: threading.active_count() <= before + 1, 5, "connection threads to end")
        assert get(server.port, "/") == (200, "text/plain", b"ok\n")
    finally:
        server.stop()


# ------------------------------------------------------------------- LiveView alone


class FakePipeline:
    """What LiveView reads of a pipeline: the config, thresholds; status is not needed here."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def threshold(self, camera: str, label: str) -> float:
        return self.cfg.labels[label].threshold

    def status(self):
        raise AssertionError("not used by these tests")


def _live(fps: float = 2.0) -> tuple[LiveView, FakePipeline]:
    cfg = Config.model_validate({
        "labels": {"cat": {"threshold": 0.4}, "nothing": {"background": True}},
        "cameras": {"c": {"source": "/dev/null", "fps": fps}},
    })
    pipeline = FakePipeline(cfg)
    return LiveView(pipeline, lambda: (True, {"status": "ok"}), {"model": "m"}, lambda: 0.0), pipeline


def _frame(i: int, value: int = 0) -> Frame:
    return Frame("c", np.full((120, 160, 3), value, np.uint8), i, i / 2, time.monotonic())


def test_score_history_keeps_five_minutes_at_the_camera_fps_and_never_more_than_its_cap():
    live, _ = _live(fps=2.0)
    for i in range(1000):
        f = _frame(i)
        live.on_classified(f, [Classification("c", i, i / 2, 0.0, {"cat": 0.5, "nothing": 0.5}, image=f.image)])
    assert len(live._history[("c", None)]) == 601  # noqa: SLF001  # 300 s at 2 fps, both ends included
    fast, _ = _live(fps=120.0)
    for i in range(MAX_HISTORY_POINTS + 50):
        fast.on_classified(_frame(i), [Classification("c", i, 0.0, 0.0, {"cat": 0.1})])
    assert len(fast._history[("c", None)]) == MAX_HISTORY_POINTS  # noqa: SLF001


def test_latest_jpeg_is_encoded_only_when_asked_and_at_most_a_few_times_a_second(monkeypatch):
    live, _ = _live()
    encodes = []
    real = cv2.imencode
    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: encodes.append(1) or real(*a, **k))
    for i in range(50):
        f = _frame(i, value=i)
        live.on_classified(f, [Classification("c", i, 0.0, 0.0, {"cat": 0.1}, image=f.image)])
    assert encodes == []  # nothing is encoded per frame
    first = live.latest_jpeg("c")
    assert cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    for i in range(50, 60):  # new frames, asked for at once: the cached picture comes back
        live.on_classified(_frame(i), [Classification("c", i, 0.0, 0.0, {"cat": 0.1})])
        assert live.latest_jpeg("c") is first
    assert len(encodes) == 1
    time.sleep(1.0 / live.max_jpeg_per_s + 0.05)
    assert live.latest_jpeg("c") is not first and len(encodes) == 2
    assert live.latest_jpeg("nope") is None


def test_events_are_listed_newest_first_with_their_snapshot_and_bounded():
    live, _ = _live()
    image = np.zeros((60, 80, 3), np.uint8)
    c = Classification("c", 0, 0.0, 0.0, {"cat": 0.9}, image=image)
    for n in range(105):
        start = Event(EventType.START, f"e{n}", "c", None, "cat", 0.6, 0.6, n, None, c)
        live.on_decisions(Decisions((), (StateChange("c", None, "cat", True, n),), (start,)))
    live.on_decisions(Decisions((), (StateChange("c", None, "cat", False, 200),),
                                (Event(EventType.END, "e104", "c", None, "cat", 0.2, 0.95, 104, 110.5),)))
    events = live.events(limit=1000)
    assert len(events) == 100 and events[0]["id"] == "e104" and events[-1]["id"] == "e5"
    assert events[0]["duration_s"] == 6.5 and events[0]["top_score"] == 0.95 and not events[0]["active"]
    assert [e["id"] for e in live.events(limit=2)] == ["e104", "e103"]
    snapshot = live.event_snapshot("e104")
    assert cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR).shape == (60, 80, 3)
    assert live.event_snapshot("e0") is None  # dropped with its event
    assert live.scores()["c"][""]["on"] == {"cat": False, "nothing": False}


# ------------------------------------------------------------------ the daemon's API

LABELS = {
    "red_thing": {"prompts": ["a red object"], "threshold": 0.0},
    "blue_thing": {"prompts": ["a blue object"], "threshold": 0.0},
    "nothing": {"prompts": ["an empty scene"], "background": True},
}


def _colour_video(path: Path, frames: int = 20) -> Path:
    def colour(i: int) -> np.ndarray:
        img = np.zeros((120, 160, 3), np.uint8)
        img[:] = (0, 0, 255)
        img[:, (i * 7) % 160:] //= 2
        return img

    return make_video(path, frames, fps=10, size=(160, 120), color_fn=colour)


def test_api_endpoints_viewer_bound_offline_camera_and_a_label_set_replaced_at_runtime(
        tmp_path, broker, prefix, tiny_clip_dir, start_daemon):
    port = free_port()
    cameras = {
        "c": {"source": str(_colour_video(tmp_path / "c.mp4")), "fps": 5, "loop": True,
              "zones": {"left": {"box": [0, 0, 0.5, 1]}}},
        "gone": {"source": f"rtsp://user:pw@127.0.0.1:{free_port()}/x", "fps": 1},
    }
    cfg = base_config(tiny_clip_dir, broker, prefix, cameras, labels=LABELS,
                      metrics={"port": port, "max_streams": 2})
    daemon = start_daemon(cfg)
    def ready(s: dict) -> bool:
        # The state comes from the camera, its reason from the status report it sends right after: wait for both.
        return (s["cameras"][0]["frames_classified"] > 0 and s["cameras"][1]["state"] == "offline"
                and bool(s["cameras"][1]["reason"]))

    status = wait_until(lambda: _status_when(port, ready), 90, "frames and an offline camera")
    assert [c["name"] for c in status["cameras"]] == ["c", "gone"]
    assert {"healthy", "model", "device", "precision", "mqtt_connected", "frames_per_s"} <= set(status["header"])
    c, gone = status["cameras"]
    assert c["state"] == "online" and c["zones"] == [{"name": "left", "box": [0, 0, 0.5, 1]}]
    assert c["frame_size"] == [160, 120] and set(c["history"]) == {"left"}
    assert [(lb["name"], lb["threshold"]) for lb in c["labels"]] == [("red_thing", 0.0), ("blue_thing", 0.0),
                                                                     ("nothing", None)]
    assert gone["reason"] and "pw" not in json.dumps(gone)  # why it is offline, credentials redacted

    # The page and its assets; the camera's picture; 404s that say where to look.
    status_code, ctype, body = get(port, "/")
    assert status_code == 200 and ctype.startswith("text/html") and b"/static/app.js" in body
    assert get(port, "/static/style.css")[0] == 200 and get(port, "/static/../config.py")[0] == 404
    status_code, ctype, body = get(port, "/api/cameras/c/latest.jpg")
    assert status_code == 200 and ctype == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    assert get(port, "/api/cameras/gone/latest.jpg")[0] == 404 and get(port, "/api/cameras/x/latest.jpg")[0] == 404
    assert get(port, "/metrics")[0] == 404  # metrics stay off unless enabled
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    refused.value.close()
    assert refused.value.code == 405  # read-only

    # Events (threshold 0: the zone's labels turn ON) with their snapshots.
    events = wait_until(lambda: get_json(port, "/api/events?limit=5")["events"], 30, "events")
    assert len(get_json(port, "/api/events?limit=1")["events"]) == 1
    assert {(e["camera"], e["zone"]) for e in events} == {("c", "left")}
    status_code, ctype, body = get(port, events[0]["snapshot"])
    assert status_code == 200 and ctype == "image/jpeg" and cv2.imdecode(np.frombuffer(body, np.uint8), 1) is not None
    assert get(port, "/api/events/no-such-id/snapshot.jpg")[0] == 404

    # Live streams: status and scores at once, at most max_streams of them.
    streams = [SseClient(port), SseClient(port)]
    wait_until(lambda: all(s.of("status") and s.of("scores") for s in streams), 10, "both streams to start")
    assert get(port, "/api/stream")[0] == 503
    scores = streams[0].of("scores")[-1]["c"]["left"]
    assert set(scores["scores"]) == set(LABELS) and scores["on"]["red_thing"] is True
    streams[0].close()
    third = wait_until(lambda: _try_stream(port), 10, "the closed stream's slot to be free")
    wait_until(lambda: third.of("scores"), 10, "the new stream's scores")

    # A label set replaced at runtime: the cards and the live scores follow.
    new_labels = {"cat": {"threshold": 0.3}, "dog": {}, "nothing": {"background": True}}
    paho.mqtt.publish.single(f"{prefix}/labels/set", json.dumps(new_labels), qos=1,
                             hostname=broker.host, port=broker.port)
    status = wait_until(lambda: _status_when(port, lambda s: [lb["name"] for lb in s["cameras"][0]["labels"]]
                                              == ["cat", "dog", "nothing"]), 30, "the new labels on the card")
    assert status["cameras"][0]["labels"][0]["threshold"] == 0.3
    wait_until(lambda: set(streams[1].of("scores")[-1]["c"]["left"]["scores"]) == set(new_labels), 30,
               "scores of the new labels on the stream")
    for s in (streams[1], third):
        s.close()
    assert "Traceback" not in daemon.output


def _status_when(port: int, predicate):
    """The status once ``predicate(status)`` holds; None before (the server may not listen yet)."""
    try:
        status = get_json(port, "/api/status")
    except OSError:
        return None
    return status if predicate(status) else None


def _try_stream(port: int) -> SseClient | None:
    try:
        return SseClient(port)
    except urllib.error.HTTPError as e:
        e.close()
        return None


def test_half_sent_requests_are_timed_out_and_the_server_keeps_answering(tmp_path, broker, prefix, tiny_clip_dir,
                                                                          start_daemon):
    port = free_port()
    cameras = {"c": {"source": str(_colour_video(tmp_path / "c.mp4")), "fps": 2, "loop": True}}
    cfg = base_config(tiny_clip_dir, broker, prefix, cameras, labels=LABELS,
                      metrics={"enabled": True, "port": port, "max_connections": 8, "idle_timeout_s": 1})
    start_daemon(cfg)
    wait_until(lambda: _answers(port, "/healthz"), 90, "the HTTP server")
    silent = [half_sent_request(port) for _ in range(40)]
    # Each is answered 503 (no slot free) or dropped after the idle timeout; none is held for ever.
    assert all(closed_by_server(s, timeout=10) for s in silent)
    wait_until(lambda: _answers(port, "/healthz"), 10, "/healthz after the flood")
    wait_until(lambda: _answers(port, "/api/status"), 10, "/api/status after the flood")


def _answers(port: int, path: str) -> bool:
    try:
        return get(port, path, timeout=2)[0] == 200
    except OSError:
        return False


# -------------------------------------------------------------------- in a real browser

needs_browser = pytest.mark.skipif(
    not have_browser(),
    reason="needs Debian's chromium and websocket-client (scripts/test.sh installs both)",
)


def _solid_video(path: Path, bgr: tuple[int, int, int], seconds: int, fps: int = 10) -> Path:
    def fill(i: int) -> np.ndarray:
        img = np.zeros((120, 160, 3), np.uint8)
        img[:] = bgr
        return img

    return make_video(path, seconds * fps, fps=fps, size=(160, 120), color_fn=fill)


def _threshold_for_scene_change(model_dir: Path) -> tuple[str, float]:
    """The label whose score rises most from a black scene to a red one, and a threshold between the two."""
    from streamclf.config import ModelConfig
    from streamclf.model import ClipClassifier

    classifier = ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision="fp32"))
    prompts = {name: lc["prompts"] for name, lc in LABELS.items()}
    scenes = [np.zeros((120, 160, 3), np.uint8), np.full((120, 160, 3), (0, 0, 255), np.uint8)]
    black, red = classifier.score(classifier.embed_images(scenes, bgr=True), classifier.encode_labels(prompts),
                                  [list(prompts)] * 2)
    label = max((n for n, lc in LABELS.items() if not lc.get("background")), key=lambda n: red[n] - black[n])
    assert red[label] - black[label] > 0.05, (black, red)
    return label, (red[label] + black[label]) / 2


@needs_rtsp
@needs_browser
def test_the_page_in_chromium_follows_a_live_stream_and_a_scene_change(tmp_path, broker, prefix, tiny_clip_dir,
                                                                       start_daemon):
    label, threshold = _threshold_for_scene_change(tiny_clip_dir)
    labels = {name: {**lc, "threshold": threshold if name == label else 1.0} for name, lc in LABELS.items()}
    black = _solid_video(tmp_path / "black.mp4", (0, 0, 0), seconds=120, fps=5)
    red = _solid_video(tmp_path / "red.mp4", (0, 0, 255), seconds=120, fps=5)
    port = free_port()
    with RtspServer(fps=10) as pattern, RtspServer(file=black) as door:
        cameras = {
            "yard": {"source": pattern.url, "fps": 4, "labels": [n for n in labels if n != label]},
            "door": {"source": door.url, "fps": 4, "reconnect_backoff_initial_s": 0.5, "reconnect_backoff_max_s": 1},
        }
        cfg = base_config(tiny_clip_dir, broker, prefix, cameras, labels=labels, metrics={"port": port})
        daemon = start_daemon(cfg)
        wait_until(lambda: _status_when(port, lambda s: all(c["frames_classified"] > 0 for c in s["cameras"])),
                   90, "both cameras classified")
        browser = Browser(width=1280, height=1000)
        try:
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for("document.getElementById('live').textContent === 'connected'", 15, "the live stream")
            assert browser.evaluate("[...document.querySelectorAll('.card')].map(c => c.dataset.camera)") == \
                ["yard", "door"]
            # The live stream moves the yard's bars: collect the scores the page shows for a while.
            seen = set()
            deadline = time.monotonic() + 20
            while len(seen) < 3 and time.monotonic() < deadline:
                seen.add(browser.evaluate(
                    "document.querySelector('.card[data-camera=yard] .label').dataset.score || ''"))
                time.sleep(0.5)
            assert len(seen - {""}) >= 3, seen
            browser.wait_for("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth)",
                             15, "each card's picture")
            assert browser.evaluate("document.querySelectorAll('#events tbody tr').length") == 0
            # The scene changes: the door camera's stream turns red.
            door.kill()
            door.file = str(red)
            door.start()
            browser.wait_for(f"[...document.querySelectorAll('#events tbody tr')].some(r => "
                             f"r.textContent.includes('door') && r.textContent.includes('{label}'))",
                             60, "the door's event in the list")
            browser.wait_for("[...document.querySelectorAll('#events tbody img')].every(i => i.complete && "
                             "i.naturalWidth > 0) && document.querySelectorAll('#events tbody img').length > 0",
                             15, "the event's thumbnail")
            browser.wait_for(f"document.querySelector('.card[data-camera=door] .label[data-label={label}] .onoff')"
                             ".textContent === 'ON'", 15, "the door's label ON")
            time.sleep(1.0)  # a few more score points on the sparklines for the screenshot
            shot = browser.screenshot(tmp_path / "live-page.png")
            assert browser.errors == [], browser.errors
        finally:
            browser.close()
        print(f"screenshot: {shot}")
        if os.environ.get("STREAMCLF_UPDATE_SCREENSHOT"):
            shutil.copy(shot, REPO / "docs" / "live-page.png")
        assert "Traceback" not in daemon.output
