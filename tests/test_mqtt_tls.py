"""MQTT over TLS against a real mosquitto with a TLS listener and certificates the test makes.

Checked: the config's TLS files at check-config (key and line), a CA-verified connection with
and without a client certificate, and each way it goes wrong logged as what it is (a wrong CA,
a missing client certificate, a plaintext client at a TLS port, a TLS client at a plaintext
port); then the daemon end to end over TLS.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from streamclf.config import ConfigError, MqttConfig, parse_config
from streamclf.mqtt_client import MqttClient
from streamclf.workers import Workers
from tests.conftest import base_config, wait_until
from tests.servers import MosquittoBroker, MqttCollector, make_video
from tests.servers.tls import TlsFiles, make_ca, make_tls_files, with_server_names

SECRET_KEY_MARK = "PRIVATE KEY"
# paho leaves the socket of a failed TLS handshake to the garbage collector, which closes it at
# once (reference counting) but warns "unclosed": not a leak, and not ours to fix.
handshake_fails = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(tls_files):
    with MosquittoBroker(tls=tls_files) as b:
        yield b


@pytest.fixture(scope="module")
def mtls_broker(tls_files):
    with MosquittoBroker(tls=tls_files, require_certificate=True) as b:
        yield b


def client_for(broker, prefix: str, **mqtt) -> MqttClient:
    cfg = MqttConfig(host=broker.host, port=broker.port, topic_prefix=prefix,
                     client_id=f"test-{uuid.uuid4().hex[:8]}", **mqtt)
    client = MqttClient(cfg, workers=Workers())
    client.client.reconnect_delay_set(0.2, 0.5)
    return client


def cannot_connect_lines(caplog, broker) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"{broker.host}:{broker.port}: cannot connect" in r.getMessage()]


def publish_once(client: MqttClient, prefix: str) -> None:
    client.start()
    client.set_retained(f"{prefix}/hello", "over TLS")


# --------------------------------------------------------------------------- config

def _config(mqtt: str) -> str:
    return f"mqtt:\n  host: 127.0.0.1\n{mqtt}labels: {{a: {{}}, b: {{}}}}\ncameras: {{c: {{source: x.mp4}}}}\n"


def test_tls_settings_are_accepted_and_imply_tls(tls_files):
    cfg = parse_config(_config(f"  tls_ca_certs: {tls_files.ca}\n  tls_client_cert: {tls_files.client_cert}\n"
                               f"  tls_client_key: {tls_files.client_key}\n"))
    assert cfg.mqtt.tls_enabled and cfg.mqtt.tls_ca_certs == str(tls_files.ca)
    assert parse_config(_config("  tls: true\n")).mqtt.tls_enabled  # the system's CA store
    assert not parse_config(_config("")).mqtt.tls_enabled


@pytest.mark.parametrize(
    "mqtt, path, line, message",
    [
        ("  tls_ca_certs: /nonexistent/ca.pem\n", "mqtt.tls_ca_certs", 3, "No such file or directory"),
        ("  tls_ca_certs: certs/ca.pem\n", "mqtt.tls_ca_certs", 3, "absolute path"),
        ("  tls_ca_certs: {not_pem}\n", "mqtt.tls_ca_certs", 3, "holds no a PEM certificate"),
        ("  tls: true\n  tls_client_cert: {client_cert}\n", "mqtt", 1, "together"),
        ("  tls_insecure: true\n", "mqtt", 1, "TLS only"),
        ("  tls_ca_certs: {ca}\n  tls_client_cert: {client_cert}\n  tls_client_key: {other_key}\n",
         "mqtt.tls_client_key", 5, "cannot be used together"),
        ("  tls_ca_certs: {ca}\n  tls_client_cert: {client_cert}\n  tls_client_key: {client_cert}\n",
         "mqtt.tls_client_key", 5, "holds no a PEM private key"),
    ],
    ids=["missing", "relative", "not-pem", "cert-without-key", "insecure-without-tls", "key-of-another-cert",
         "cert-as-key"],
)
def test_bad_tls_settings_are_errors_with_key_and_line(tls_files, tmp_path, mqtt, path, line, message):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    _, other_key = make_ca(tmp_path, "other")
    text = _config(mqtt.format(not_pem=not_pem, client_cert=tls_files.client_cert, ca=tls_files.ca,
                               other_key=other_key))
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    [problem] = exc.value.problems
    assert (problem.path, problem.line) == (path, line) and message.replace("no a", "no") in problem.message.replace(
        "no a", "no"), problem
    assert SECRET_KEY_MARK not in str(exc.value) and "BEGIN" not in str(exc.value)


# --------------------------------------------------------------------------- connections

def test_a_client_that_trusts_the_ca_publishes_over_tls(tls_broker, tls_files, prefix):
    client = client_for(tls_broker, prefix, tls_ca_certs=str(tls_files.ca))
    try:
        publish_once(client, prefix)
        wait_until(lambda: client.connected and client.flush(0.1), 15, "published over TLS")
    finally:
        client.stop(flush_timeout_s=1)


@handshake_fails
def test_mutual_tls_connects_with_a_client_certificate_and_says_what_is_missing_without(mtls_broker, tls_files,
                                                                                        prefix, caplog):
    files = {"tls_ca_certs": str(tls_files.ca), "tls_client_cert": str(tls_files.client_cert),
             "tls_client_key": str(tls_files.client_key)}
    client = client_for(mtls_broker, prefix, **files)
    try:
        publish_once(client, prefix)
        wait_until(lambda: client.connected and client.flush(0.1), 15, "published with a client certificate")
    finally:
        client.stop(flush_timeout_s=1)
    assert not cannot_connect_lines(caplog, mtls_broker)

    bare = client_for(mtls_broker, prefix, tls_ca_certs=str(tls_files.ca))
    bare.start()
    try:
        wait_until(lambda: bare.connect_failures >= 2, 20, "refused without a client certificate")
        [line] = cannot_connect_lines(caplog, mtls_broker)
        assert "client certificate" in line, line
        assert not bare.connected
    finally:
        bare.stop(flush_timeout_s=0.2)


@handshake_fails
def test_a_wrong_ca_is_logged_as_such_once(tls_broker, tmp_path, prefix, caplog):
    wrong_ca, _ = make_ca(tmp_path, "wrong")
    client = client_for(tls_broker, prefix, tls_ca_certs=str(wrong_ca))
    client.start()
    try:
        wait_until(lambda: client.connect_failures >= 3, 20, "three failed handshakes")
        [line] = cannot_connect_lines(caplog, tls_broker)
        assert "certificate was not accepted" in line and "mqtt.tls_ca_certs" in line, line
        assert "certificate" in client.last_error
    finally:
        client.stop(flush_timeout_s=0.2)


@handshake_fails
def test_a_plaintext_client_at_a_tls_port_and_a_tls_client_at_a_plaintext_port_are_logged_as_such(
        tls_broker, broker, tls_files, prefix, caplog):
    plain = client_for(tls_broker, prefix)
    plain.start()
    try:
        wait_until(lambda: cannot_connect_lines(caplog, tls_broker), 20, "the plaintext failure logged")
        [line] = cannot_connect_lines(caplog, tls_broker)
        assert "TLS listener" in line, line
    finally:
        plain.stop(flush_timeout_s=0.2)

    tls_at_plain = client_for(broker, prefix, tls_ca_certs=str(tls_files.ca))
    tls_at_plain.start()
    try:
        wait_until(lambda: cannot_connect_lines(caplog, broker), 20, "the TLS failure logged")
        [line] = cannot_connect_lines(caplog, broker)
        assert "does not speak TLS" in line, line
    finally:
        tls_at_plain.stop(flush_timeout_s=0.2)


@handshake_fails
def test_a_host_name_not_in_the_certificate_is_refused_unless_tls_insecure(tls_files, tmp_path, prefix, caplog):
    with MosquittoBroker(tls=with_server_names(tls_files, tmp_path / "other", "other.example")) as b:
        strict = client_for(b, prefix, tls_ca_certs=str(tls_files.ca))
        strict.start()
        try:
            wait_until(lambda: cannot_connect_lines(caplog, b), 20, "the mismatch logged")
            [line] = cannot_connect_lines(caplog, b)
            assert "certificate was not accepted" in line and "127.0.0.1" in line, line
        finally:
            strict.stop(flush_timeout_s=0.2)
        insecure = client_for(b, prefix, tls_ca_certs=str(tls_files.ca), tls_insecure=True)
        try:
            publish_once(insecure, prefix)
            wait_until(lambda: insecure.connected and insecure.flush(0.1), 15, "connected without the name check")
        finally:
            insecure.stop(flush_timeout_s=1)


# --------------------------------------------------------------------------- the daemon

@pytest.mark.slow
def test_the_daemon_publishes_over_mutual_tls(mtls_broker, tls_files, tmp_path, prefix, tiny_clip_dir, start_daemon):
    video = make_video(tmp_path / "v.mp4", 20)
    cfg = base_config(tiny_clip_dir, mtls_broker, prefix, {"cam": {"source": str(video), "fps": 5, "loop": True}},
                      mqtt={"tls_ca_certs": str(tls_files.ca), "tls_client_cert": str(tls_files.client_cert),
                            "tls_client_key": str(tls_files.client_key)})
    daemon = start_daemon(cfg)
    collector = MqttCollector(mtls_broker.host, mtls_broker.port, f"{prefix}/#", tls=tls_files)
    try:
        collector.wait_for(lambda m: any(t == f"{prefix}/cam/detection" for t, _, _ in m), timeout=60)
        assert any(t == f"{prefix}/available" and p == b"online" for t, p, _ in collector.all)
    finally:
        collector.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    out = daemon.output
    assert "MQTT connected to 127.0.0.1" in out and "cannot connect" not in out
    assert SECRET_KEY_MARK not in out and Path(tls_files.client_key).read_text() not in out
