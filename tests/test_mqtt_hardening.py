"""The MQTT client under abuse: bad topics, dead threads, overflowing queues, control floods, brokers that fail.

Everything runs against a real mosquitto (tests/servers); the client runs in-process so the
test can read its counters and log records.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from streamclf.config import ConfigError, MqttConfig, parse_config
from streamclf.control import Controller
from streamclf.mqtt_client import MqttClient
from streamclf.service.health import evaluate_progress
from streamclf.status import InferenceStatus
from streamclf.throttle import RateLimit
from streamclf.workers import Workers
from tests.conftest import base_config, daemon_env, wait_until
from tests.servers import MosquittoBroker, free_port, read_retained
from tests.test_control import CONFIG, FakePipeline
from tests.test_reliability import silent_server
from tests.test_service import NotifyListener, colour_video, http_get


def client_for(host: str, port: int, prefix: str, **mqtt) -> MqttClient:
    cfg = MqttConfig(host=host, port=port, topic_prefix=prefix, client_id=f"test-{uuid.uuid4().hex[:8]}", **mqtt)
    return MqttClient(cfg, workers=Workers())


def lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --------------------------------------------------------------------------- item 2: no silent thread death

@pytest.mark.parametrize("bad_topic", ["x" * 70_000, "a/+/b", "a/#", ""])
def test_a_message_paho_refuses_is_dropped_counted_and_logged_and_the_sender_goes_on(broker, prefix, collector,
                                                                                   caplog, bad_topic):
    client = client_for(broker.host, broker.port, prefix)
    client.start()
    try:
        wait_until(lambda: client.connected, 10, "connected")
        client.publish(bad_topic, b"x")
        client.publish(f"{prefix}/after", b"still publishing")
        collector.wait_for(lambda m: any(t == f"{prefix}/after" for t, _, _ in m), timeout=10)
        assert client.invalid_messages == 1
        assert not client.workers.failures()
        assert len(lines(caplog, "MQTT: cannot publish")) == 1
    finally:
        client.stop(flush_timeout_s=1)


def test_a_worker_that_raises_is_logged_with_its_name_and_recorded_for_the_health_check(caplog):
    workers = Workers()

    def boom():
        raise RuntimeError("injected fault")

    t = workers.thread(boom, "test-worker")
    t.start()
    t.join(5)
    [failure] = workers.failures()
    assert failure.name == "test-worker" and "RuntimeError: injected fault" in failure.error
    [record] = [r for r in caplog.records if "test-worker" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info
    inference = InferenceStatus(alive=True, batch_started=None, last_progress=time.monotonic(), queue_depth=0)
    progress = evaluate_progress(inference, 30.0, time.monotonic(), None, workers.failures())
    assert not progress.ok and "test-worker" in progress.reason and "injected fault" in progress.reason


# --------------------------------------------------------------------------- item 8: retained state first

def test_retained_states_survive_an_outage_queue_that_overflows(prefix):
    with MosquittoBroker() as b:
        port = b.port
        b.stop()
        client = client_for(b.host, port, prefix, max_queued_messages=10)
        client.start()  # the broker is down: everything queues
        try:
            for i in range(300):
                client.set_retained(f"{prefix}/state/{i}", "ON")
            for i in range(100):
                client.publish(f"{prefix}/detection", {"i": i}, qos=1)
            for i in range(0, 300, 2):
                client.set_retained(f"{prefix}/state/{i}", "OFF")  # the newest value of a state replaces the queued one
            assert client.dropped_overflow == 90  # detections only: 100 into a bound of 10
            assert set(client.dropped_by_topic) == {f"{prefix}/detection"}
            b.start()
            wait_until(lambda: client.connected and client.flush(0.1), 30, "the queue delivered")
            for i in (0, 1, 2, 3, 298, 299):
                assert read_retained(b.host, port, f"{prefix}/state/{i}") == (b"OFF" if i % 2 == 0 else b"ON"), i
        finally:
            client.stop(flush_timeout_s=1)


def test_a_retained_topic_waits_in_the_queue_once_with_its_newest_value(prefix):
    client = client_for("127.0.0.1", free_port(), prefix, max_queued_messages=5)  # nothing listens: stays queued
    for i in range(1000):
        client.set_retained(f"{prefix}/state", str(i))
    assert client.queued == 1 and client.dropped_overflow == 0


# --------------------------------------------------------------------------- item 12: floods

def test_a_control_flood_is_rate_limited_in_the_log_and_on_the_error_topic(broker, prefix, collector, caplog):
    caplog.set_level(logging.INFO)
    client = client_for(broker.host, broker.port, prefix)
    target = FakePipeline(parse_config(CONFIG.replace("home/clf", prefix)))
    controller = Controller(target, client)
    controller.start()
    client.start()
    try:
        wait_until(lambda: client.connected, 10, "connected")
        time.sleep(0.5)  # subscribed
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{prefix}")
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        # Below mosquitto's default per-client queue (1000 QoS 1 messages): past it the broker itself drops
        # commands on their way to a busy controller, and the count below would not add up.
        flood = 600
        t0 = time.monotonic()
        for i in range(flood):
            sender.publish(f"{prefix}/front/enabled/set", f"bad{i}", qos=1)
        wait_until(lambda: controller.rejected == flood, 30, "every command answered")
        elapsed = time.monotonic() - t0
        sender.disconnect()
        sender.loop_stop()
        time.sleep(1.5)
        rejected_lines = [s for s in lines(caplog, "control: rejected") if "suppressed" not in s]
        assert len(rejected_lines) <= 10 * (elapsed / 10 + 2), len(rejected_lines)
        wait_until(lambda: lines(caplog, "suppressed"), 15, "the summary line")
        suppressed = sum(int(re.search(r"(\d+) more line", s).group(1)) for s in lines(caplog, "suppressed"))
        assert len(rejected_lines) + suppressed == flood
        time.sleep(0.5)
        errors = collector.json_messages(f"{prefix}/error")
        assert 1 <= len(errors) <= 10 * (elapsed + 2), len(errors)
        # After the flood, a bad command is answered again, and the answer counts the ones that were not.
        publish_command(broker, f"{prefix}/front/enabled/set", b"after the flood")
        collector.wait_for(lambda m: any(e["payload"] == "after the flood" for e in collector.json_messages(
            f"{prefix}/error")), timeout=10)
        answered = len(collector.json_messages(f"{prefix}/error")) - 1
        last = collector.json_messages(f"{prefix}/error")[-1]
        assert answered + sum(e.get("replies_suppressed", 0) for e in collector.json_messages(f"{prefix}/error")) \
            == flood, last
    finally:
        controller.stop()
        client.stop(flush_timeout_s=1)


# --------------------------------------------------------------------------- item 7: failures before CONNACK

def test_connection_failures_are_logged_once_per_cause_with_the_broker_address_and_the_reconnect(prefix, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    client = client_for("127.0.0.1", port, prefix)
    client.client.reconnect_delay_set(0.1, 0.2)
    client.start()
    try:
        wait_until(lambda: client.connect_failures >= 3, 20, "three refused attempts")
        refused = lines(caplog, f"127.0.0.1:{port}")
        assert len(refused) == 1 and "refused" in refused[0].lower(), refused
        assert "refused" in client.last_error.lower()
        with MosquittoBroker(port=port):
            wait_until(lambda: client.connected, 20, "connected")
            connected = lines(caplog, "MQTT connected")
            assert len(connected) == 1 and f"127.0.0.1:{port}" in connected[0] and "failed attempt" in connected[0]
    finally:
        client.stop(flush_timeout_s=0.5)


def test_a_broker_that_never_answers_is_logged_with_its_address(prefix, caplog):
    with silent_server() as port:
        client = client_for("127.0.0.1", port, prefix, keepalive_s=5)
        client.client.reconnect_delay_set(0.1, 0.2)
        client.start()
        try:
            wait_until(lambda: lines(caplog, f"127.0.0.1:{port}"), 20, "the silent broker logged")
            [line] = lines(caplog, f"127.0.0.1:{port}")
            assert "no answer" in line or "did not answer" in line, line
        finally:
            client.stop(flush_timeout_s=0.5)


# --------------------------------------------------------------------------- credentials

def test_a_password_without_a_username_is_a_config_error_naming_the_key_and_line():
    with pytest.raises(ConfigError) as exc:
        parse_config("mqtt:\n  password: hunter2\nlabels: {a: {}, b: {}}\ncameras: {c: {source: x.mp4}}\n")
    [problem] = exc.value.problems
    assert problem.path == "mqtt" and problem.line == 1 and "username" in problem.message
    assert "hunter2" not in str(exc.value)


# --------------------------------------------------------------------------- item 2, end to end

@pytest.mark.slow
def test_a_dead_worker_thread_makes_healthz_503_and_stops_the_watchdog(tmp_path, broker, prefix, collector,
                                                                      tiny_clip_dir, start_daemon):
    video = colour_video(tmp_path / "v.mp4")
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    port = free_port()
    try:
        cfg = base_config(tiny_clip_dir, broker, prefix, {"cam": {"source": str(video), "fps": 5, "loop": True}},
                          metrics={"enabled": True, "port": port})
        env = daemon_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000",
                         STREAMCLF_TEST_FAULT="control")
        daemon = start_daemon(cfg, env=env, module="tests.faulty_daemon")
        listener.wait_for("READY=1", timeout=60)
        healthz = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: http_get(healthz)[0] == 200, 20, "/healthz 200")
        listener.wait_for("WATCHDOG=1", count=2, timeout=10)

        publish_command(broker, f"{prefix}/cam/enabled/set", b"OFF")
        status, body = wait_until(lambda: (r := http_get(healthz))[0] == 503 and r, 20, "/healthz 503")
        reasons = json.loads(body)["reasons"]
        assert any("thread control has died" in r and "InjectedFault" in r for r in reasons), reasons
        t_dead = time.monotonic()
        time.sleep(2.5)
        assert all(t <= t_dead for t, _ in listener.having("WATCHDOG=1")), listener.messages[-5:]
        assert re.search(r"ERROR streamclf\.workers: thread control failed and has stopped: InjectedFault",
                         daemon.output)
        assert "pipeline is not making progress: thread control has died" in daemon.output
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 3  # a thread died: not a clean exit
    finally:
        listener.close()


@pytest.mark.slow
def test_a_failed_inference_thread_is_logged_and_ends_the_daemon_with_a_failure_code(tmp_path, broker, prefix,
                                                                                    tiny_clip_dir, start_daemon):
    video = colour_video(tmp_path / "v.mp4")
    cfg = base_config(tiny_clip_dir, broker, prefix, {"cam": {"source": str(video), "fps": 5, "loop": True}})
    daemon = start_daemon(cfg, env=daemon_env(STREAMCLF_TEST_FAULT="inference"), module="tests.faulty_daemon")
    assert daemon.wait(60) == 3, daemon.output[-3000:]  # not 0: systemd's Restart=on-failure starts it again
    assert re.search(r"ERROR streamclf\.workers: thread inference failed and has stopped: RuntimeError: test fault",
                     daemon.output)


def publish_command(broker, topic: str, payload: bytes) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cmd-{uuid.uuid4().hex[:8]}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_rate_limit_passes_events_again_in_the_next_window_and_reports_what_it_held_back_once():
    limit = RateLimit(2, per_s=1.0)
    assert [limit.allow("k", now=t) for t in (0.0, 0.1, 0.2, 0.3)] == [True, True, False, False]
    assert limit.take_suppressed(now=0.5) == {}  # the window has not ended
    assert limit.allow("k", now=1.5)  # a new window
    assert limit.take_suppressed(now=1.6) == {"k": (2, 1.0)}
    assert limit.take_suppressed(now=5.0) == {}
