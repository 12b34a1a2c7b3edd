"""Smoke tests for the real test servers in tests/servers (mosquitto, RTSP, videos)."""
import time

import pytest

from tests.servers import MosquittoBroker, MqttCollector, RtspServer, free_port, have_rtsp, make_video, read_retained

cv2 = pytest.importorskip("cv2")
needs_rtsp = pytest.mark.skipif(
    not have_rtsp(), reason="needs /usr/bin/python3 with gi + GstRtspServer 1.0 (apt: python3-gi "
    "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-{good,bad,ugly})")


@pytest.fixture
def rtsp_tcp(monkeypatch):
    # TCP interleaved RTSP; analyzeduration=0.1s cuts cv2's open() from ~2 s to ~0.3 s.
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|analyzeduration;100000")


def _publish(port, topic, payload, retain=False):
    import paho.mqtt.publish as publish
    publish.single(topic, payload, qos=1, retain=retain, hostname="127.0.0.1", port=port)


def test_broker_start_stop_restart_with_collector():
    with MosquittoBroker() as broker:
        port = broker.port
        col = MqttCollector(broker.host, port, "test/#")
        try:
            _publish(port, "test/a", b"one")
            col.wait_for(lambda m: any(p == b"one" for _, p, _ in m), timeout=5)
            _publish(port, "test/r", b'{"x": 1}', retain=True)
            assert read_retained(broker.host, port, "test/r") == b'{"x": 1}'
            assert read_retained(broker.host, port, "test/none", timeout=1) is None

            broker.restart(hard=True)
            assert broker.port == port and broker.running
            col.wait_subscribed(timeout=10)  # paho reconnects by itself
            _publish(port, "test/b", b"two")
            col.wait_for(lambda m: any(p == b"two" for _, p, _ in m), timeout=5)
            assert col.json_messages("test/r") == [{"x": 1}]
            assert [t for t, _, _ in col.messages("test/+")] == ["test/a", "test/r", "test/b"]
            with pytest.raises(AssertionError, match="3 message"):
                col.wait_for(lambda m: False, timeout=0.2)

            broker.restart(down_for=0.2)  # graceful stop, stay down a bit, same port
            col.wait_subscribed(timeout=10)
            _publish(port, "test/c", b"three")
            col.wait_for(lambda m: any(p == b"three" for _, p, _ in m), timeout=5)
            assert col.connect_count == 3
        finally:
            col.close()
        broker.stop()
        assert not broker.running


def test_broker_with_password():
    with MosquittoBroker(username="u", password="secret") as broker:
        with pytest.raises(AssertionError):
            MqttCollector(broker.host, broker.port, timeout=1)
        col = MqttCollector(broker.host, broker.port, "#", username="u", password="secret")
        col.close()


@pytest.mark.parametrize("name", ["v.mp4", "v.avi"])
def test_make_video_round_trip(tmp_path, name):
    path = make_video(tmp_path / name, frames=12, fps=10, size=(160, 120))
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == 12 and frames[0].shape == (120, 160, 3)
    assert abs(frames[0].astype(int) - frames[5].astype(int)).mean() > 5  # frames differ


def _read_frames(url, n, timeout=15.0):
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    try:
        assert cap.isOpened(), f"could not open {url}"
        shapes, deadline = [], time.monotonic() + timeout
        while len(shapes) < n and time.monotonic() < deadline:
            ok, f = cap.read()
            if ok:
                shapes.append(f.shape)
        return shapes
    finally:
        cap.release()


@needs_rtsp
def test_rtsp_pattern_kill_restart(rtsp_tcp):
    srv = RtspServer(port=free_port(), path="/cam").start()
    try:
        assert srv.url == f"rtsp://127.0.0.1:{srv.port}/cam"
        assert _read_frames(srv.url, 3) == [(480, 640, 3)] * 3
        port = srv.port
        srv.kill()
        assert not srv.running
        srv.restart()
        assert srv.port == port
        assert _read_frames(srv.url, 3) == [(480, 640, 3)] * 3
    finally:
        srv.close()


@needs_rtsp
def test_rtsp_file(rtsp_tcp, tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=30, fps=10, size=(320, 240))
    with RtspServer(file=video, path="vid") as srv:
        assert _read_frames(srv.url, 3) == [(240, 320, 3)] * 3
