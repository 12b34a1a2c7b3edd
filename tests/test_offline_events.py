"""Honest states end to end: a live camera that goes offline ends its open events after off_delay_s."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import base_config, needs_rtsp
from tests.servers import RtspServer, read_retained

FAST = {"open_timeout_s": 2, "read_timeout_s": 2, "stall_timeout_s": 2,
        "reconnect_backoff_initial_s": 0.2, "reconnect_backoff_max_s": 1}


@needs_rtsp
@pytest.mark.slow
def test_an_event_of_a_camera_that_goes_offline_ends_with_camera_offline(tmp_path, broker, prefix, collector,
                                                                         tiny_clip_dir, start_daemon):
    off_delay_s = 3
    labels = {"thing": {"prompts": ["a test pattern"], "threshold": 0.0, "off_delay_s": off_delay_s},
              "nothing": {"prompts": ["an empty scene"], "background": True}}
    with RtspServer(fps=10) as rtsp:
        cameras = {"live": {"source": rtsp.url, "fps": 4, **FAST}}
        daemon = start_daemon(base_config(tiny_clip_dir, broker, prefix, cameras, labels=labels,
                                          events={"snapshots": {"enabled": False}}))
        events = lambda: collector.json_messages(f"{prefix}/live/event")  # noqa: E731
        collector.wait_for(lambda m: any(e["type"] == "start" for e in events()), timeout=60)
        assert read_retained(broker.host, broker.port, f"{prefix}/live/thing") == b"ON"

        rtsp.kill()
        killed = time.monotonic()
        collector.wait_for(lambda m: any(e["type"] == "end" for e in events()), timeout=30)
        ended_after = time.monotonic() - killed
        (end,) = [e for e in events() if e["type"] == "end"]
        assert end["reason"] == "camera_offline"
        assert end["end_time"] - end["start_time"] >= 0
        # Not before off_delay_s without frames; soon after the camera is seen offline.
        assert off_delay_s - 0.5 <= ended_after <= off_delay_s + 2 + 3, ended_after
        assert read_retained(broker.host, broker.port, f"{prefix}/live/thing") == b"OFF"
        assert read_retained(broker.host, broker.port, f"{prefix}/live/status") == b"offline"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0, daemon.output
    ends = [e for e in collector.json_messages(f"{prefix}/live/event") if e["type"] == "end"]
    assert len(ends) == 1  # the shutdown does not end it a second time
    assert "Traceback" not in daemon.output
