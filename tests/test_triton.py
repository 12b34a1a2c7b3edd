"""A node whose model runs on NVIDIA Triton (``model.backend: triton``), against real servers.

``streamclf serve`` runs the tiny CLIP on a real Triton (PyTriton's bundled tritonserver, on
the CPU); the nodes are the real daemon, one of them in a process where torch and transformers
cannot be imported. Faults are real too: the server killed with SIGKILL and started again, a
server answering too slowly, a server with other tensors than a node expects.
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from streamclf.backend import InferenceUnavailable, ModelLoadError
from streamclf.config import ModelConfig
from streamclf.remote import protocol as p
from tests.conftest import base_config, wait_until
from tests.servers import MqttCollector, free_port, make_video, read_frames
from tests.servers.triton import TritonServe
from tests.test_service import http_get, scrape

pytestmark = pytest.mark.slow

LABELS = {
    "red_thing": {"prompts": ["a red object", "something red"], "threshold": 0.0},
    "blue_thing": {"prompts": ["a blue object"], "threshold": 0.0},
    "nothing": {"prompts": ["an empty scene"], "background": True},
}


@pytest.fixture(scope="module")
def server(tiny_clip_dir, tmp_path_factory):
    """One ``streamclf serve`` for the tests that do not break it."""
    s = TritonServe(tiny_clip_dir, tmp_path_factory.mktemp("triton")).start()
    yield s
    assert s.stop() == 0, s.output[-3000:]


def _node_model(url: str, **triton) -> dict:
    return {"backend": "triton", "triton": {"url": url, "timeout_s": 5, "retry_max_s": 2, **triton},
            "batch_size": 4, "max_batch_wait_ms": 20}


def _local(tiny_clip_dir):
    from streamclf.model import ClipClassifier

    return ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32"))


def test_scores_through_triton_equal_local_mode(server, tiny_clip_dir):
    from streamclf.remote.client import TritonClassifier

    node = TritonClassifier(ModelConfig.model_validate(_node_model(server.url)))
    local = _local(tiny_clip_dir)
    prompts = {n: lc["prompts"] for n, lc in LABELS.items()}
    node_labels, local_labels = node.encode_labels(prompts), local.encode_labels(prompts)
    assert np.abs(node_labels.embeddings - local_labels.embeddings.numpy()).max() < 1e-5
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(11)]  # > max_batch_size 8
    frames.append(rng.integers(0, 256, (480, 200, 3), dtype=np.uint8))
    subsets = [list(LABELS)] * len(frames)
    ours = node.score(node.embed_images(frames, bgr=True), node_labels, subsets)
    theirs = local.score(local.embed_images(frames, bgr=True), local_labels, subsets)
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        assert max(abs(a[k] - b[k]) for k in a) < 1e-4, (a, b)
    status = node.backend_status()
    assert status.kind == "triton" and status.connected and status.failed_requests == 0


def test_labels_with_example_images_through_triton_equal_local_mode(server, tiny_clip_dir, tmp_path):
    import cv2

    from streamclf.config import LabelExamples
    from streamclf.remote.client import TritonClassifier

    paths = []
    for i in range(11):  # more than one request's worth (max_batch_size 8)
        paths.append(tmp_path / f"ex{i}.png")
        cv2.imwrite(str(paths[-1]), np.random.default_rng(i).integers(0, 256, (90 + i, 120, 3), dtype=np.uint8))
    prompts = {"van": ["a delivery van"], "empty": ["an empty street"]}
    examples = {"van": LabelExamples(tuple(paths), 0.7)}
    node = TritonClassifier(ModelConfig.model_validate(_node_model(server.url)))
    ours = node.encode_labels(prompts, examples).embeddings
    theirs = _local(tiny_clip_dir).encode_labels(prompts, examples).embeddings.numpy()
    assert np.abs(ours - theirs).max() < 1e-5
    with pytest.raises(ValueError, match="ex0.png cannot be read"):
        paths[0].write_bytes(b"not an image")
        node.encode_labels(prompts, examples)


def test_siglip_through_triton_scores_each_label_on_its_own_as_local_mode_does(tmp_path):
    """SigLIP's server: square resize, text padded to its positions, sigmoid with the learned bias."""
    from streamclf.model import ClipClassifier
    from streamclf.remote.client import TritonClassifier
    from tests.tiny_siglip import build_tiny_siglip

    model_dir = build_tiny_siglip(tmp_path / "siglip")
    serve = TritonServe(model_dir, tmp_path / "triton").start()
    try:
        node = TritonClassifier(ModelConfig.model_validate(_node_model(serve.url)))
        local = ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision="fp32"))
        prompts = {"cat": ["a cat"], "dog": ["a dog", "a puppy on grass"]}
        node_labels, local_labels = node.encode_labels(prompts), local.encode_labels(prompts)
        frames = [np.random.default_rng(i).integers(0, 256, (180, 320, 3), dtype=np.uint8) for i in range(3)]
        ours = node.score(node.embed_images(frames, bgr=True), node_labels, [["cat", "dog"], ["dog"], ["cat"]])
        theirs = local.score(local.embed_images(frames, bgr=True), local_labels, [["cat", "dog"], ["dog"], ["cat"]])
        for a, b in zip(ours, theirs, strict=True):
            assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < 1e-4, (a, b)
        assert node.score_rule is not None and node.score_rule.kind == "sigmoid"
        # Each label on its own: a frame's dog score does not depend on which other labels it is scored with.
        emb = node.embed_images(frames[:1], bgr=True)
        alone, with_cat = (node.score(emb, node_labels, [subset])[0] for subset in (["dog"], ["cat", "dog"]))
        assert alone["dog"] == with_cat["dog"]
    finally:
        assert serve.stop() == 0, serve.output[-3000:]


def test_a_node_without_torch_publishes_what_local_mode_scores(server, tiny_clip_dir, tmp_path, broker, prefix,
                                                              collector, start_daemon):
    video = make_video(tmp_path / "v.mp4", 10, size=(320, 240))
    cfg = base_config(tiny_clip_dir, broker, prefix, {"cam": {"source": str(video), "fps": 10, "realtime": False}},
                      LABELS, model=_node_model(server.url))
    daemon = start_daemon(cfg, module="tests.no_torch_daemon")
    assert daemon.wait(90) == 0, daemon.output[-4000:]
    assert "loaded despite the block" not in daemon.output
    detections = collector.wait_for(lambda m: len(collector.json_messages(f"{prefix}/cam/detection")) >= 20,
                                    timeout=10) and collector.json_messages(f"{prefix}/cam/detection")
    local = _local(tiny_clip_dir)
    labels = local.encode_labels({n: lc["prompts"] for n, lc in LABELS.items()})
    expected = local.score(local.embed_images(read_frames(video), bgr=True), labels, [list(LABELS)] * 10)
    for d in detections:
        assert abs(d["score"] - expected[d["frame_index"]][d["label"]]) < 1e-4, d
    assert "on the Triton server" in daemon.output and "Traceback" not in daemon.output


def test_server_away_at_start_then_killed_and_restarted(tiny_clip_dir, tmp_path, broker, prefix, start_daemon):
    """No server at start, a SIGKILL mid-run, a restart: the node never stops, counts its drops, says why, recovers."""
    serve = TritonServe(tiny_clip_dir, tmp_path / "triton")
    video = make_video(tmp_path / "v.mp4", 20, size=(160, 120))
    port = free_port()
    cfg = base_config(tiny_clip_dir, broker, prefix, {"cam": {"source": str(video), "fps": 5, "loop": True}},
                      LABELS, model=_node_model(serve.url), metrics={"enabled": True, "port": port})
    daemon = start_daemon(cfg)
    healthz = f"http://127.0.0.1:{port}/healthz"
    cam = '{camera="cam"}'
    dropped = '{camera="cam",reason="inference_unavailable"}'
    try:
        m = wait_until(lambda: (s := _scrape(port)).get(f"streamclf_frames_dropped_total{dropped}", 0) >= 3 and s,
                       60, "frames dropped while no server runs")
        assert m["streamclf_inference_connected"] == 0 and m.get(f"streamclf_frames_classified_total{cam}", 0) == 0
        status, body = http_get(healthz)
        assert status == 503 and any(f"inference server {serve.url} not connected" in r
                                     for r in json.loads(body)["reasons"]), body
        assert json.loads(body)["progress"] != "" and daemon.proc.poll() is None

        serve.start()
        ready = time.monotonic()
        wait_until(lambda: _scrape(port).get(f"streamclf_frames_classified_total{cam}", 0) >= 3, 30,
                   "classification once the server is up (labels encoded late)")
        assert wait_until(lambda: http_get(healthz)[0] == 200, 10, "/healthz 200")
        first_recovery = time.monotonic() - ready

        serve.kill()
        before = _scrape(port)
        wait_until(lambda: _scrape(port)[f"streamclf_frames_dropped_total{dropped}"]
                   >= before[f"streamclf_frames_dropped_total{dropped}"] + 3, 30, "drops after the SIGKILL")
        assert http_get(healthz)[0] == 503 and daemon.proc.poll() is None

        serve.start()
        ready = time.monotonic()
        classified = _scrape(port)[f"streamclf_frames_classified_total{cam}"]
        wait_until(lambda: _scrape(port)[f"streamclf_frames_classified_total{cam}"] >= classified + 3, 30,
                   "classification again after the restart")
        second_recovery = time.monotonic() - ready
        m = _scrape(port)
        assert m["streamclf_inference_connected"] == 1 and m["streamclf_inference_reconnects_total"] >= 1
        assert m["streamclf_inference_failed_requests_total"] >= 1
        print(f"classifying again {first_recovery:.1f} s after the server was first ready, "
              f"{second_recovery:.1f} s after its restart")
        assert "Traceback" not in daemon.output
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.output[-3000:]
    finally:
        serve.kill()


def _scrape(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except OSError:  # not serving yet
        return {}


# -- servers that are not what a node expects: PyTriton in this process -------------------------

@pytest.fixture(scope="module")
def odd_server(tmp_path_factory):
    """One Triton with three model sets: ``wrong_*`` (FP32 pixels), ``slow_*`` (answers after 2 s) and
    ``short_*`` (its image model answers with other shapes than it declares)."""
    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig as TritonModelConfig
    from pytriton.model_config import Tensor
    from pytriton.triton import Triton, TritonConfig

    from streamclf.image_spec import PreprocessSpec
    from streamclf.remote.server import use_own_libpython

    info = p.ServerInfo("odd", "clip", "softmax", 100.0, 0.0, 16, 4, PreprocessSpec(32, 32, 32)).to_json().encode()

    @batch
    def info_fn(protocol):
        answer = np.array([[info]] * len(protocol), dtype=np.object_)
        return {p.INFO_OUTPUT: answer, "other": answer}

    @batch
    def text_fn(prompts):
        return {p.EMBEDDINGS: np.ones((len(prompts), 16), np.float32) / 4}

    @batch
    def slow_image(pixels):
        time.sleep(2)
        return {p.EMBEDDINGS: np.ones((len(pixels), 16), np.float32) / 4}

    def short_image(requests):  # declares (16,) per frame, answers one row short and 8 wide (no @batch: it checks)
        return [{p.EMBEDDINGS: np.ones((len(r[p.PIXELS]) - 1, 8), np.float32)} for r in requests]

    use_own_libpython()
    triton = Triton(config=TritonConfig(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                                        grpc_address="127.0.0.1", http_address="127.0.0.1",
                                        metrics_address="127.0.0.1"),
                    workspace=tmp_path_factory.mktemp("pytriton") / "workspace")
    for prefix, pixels, image_fn in (("wrong", np.float32, slow_image), ("slow", np.uint8, slow_image),
                                     ("short", np.uint8, short_image)):
        cfg = TritonModelConfig(max_batch_size=4)
        triton.bind(f"{prefix}_info", info_fn, [Tensor(name=p.PROTOCOL_INPUT, dtype=bytes, shape=(1,))],
                    [Tensor(name=p.INFO_OUTPUT, dtype=bytes, shape=(1,))], config=cfg)
        triton.bind(f"{prefix}_text", text_fn, [Tensor(name=p.PROMPTS, dtype=bytes, shape=(1,))],
                    [Tensor(name=p.EMBEDDINGS, dtype=np.float32, shape=(16,))], config=cfg)
        triton.bind(f"{prefix}_image", image_fn, [Tensor(name=p.PIXELS, dtype=pixels, shape=(3, 32, 32))],
                    [Tensor(name=p.EMBEDDINGS, dtype=np.float32, shape=(16,))], config=cfg)
    # bare_info answers under another output name than info: a node finds no ServerInfo in it.
    triton.bind("bare_info", info_fn, [Tensor(name=p.PROTOCOL_INPUT, dtype=bytes, shape=(1,))],
                [Tensor(name="other", dtype=bytes, shape=(1,))], config=TritonModelConfig(max_batch_size=4))
    triton.run()
    yield f"127.0.0.1:{triton._config.grpc_port}"  # noqa: SLF001  # PyTriton keeps the port it was given there
    triton.stop()


def test_a_server_with_other_tensors_is_a_clear_error_naming_both(odd_server):
    from streamclf.remote.client import TritonClassifier

    with pytest.raises(ModelLoadError) as err:
        TritonClassifier(ModelConfig.model_validate(_node_model(odd_server, model_prefix="wrong")))
    message = str(err.value)
    assert "wrong_image" in message and "pixels FP32 [-1, 3, 32, 32]" in message and "pixels UINT8" in message


def test_a_server_whose_info_model_answers_no_info_is_a_clear_error(odd_server):
    from streamclf.remote.client import TritonClassifier

    with pytest.raises(ModelLoadError, match="bare_info"):
        TritonClassifier(ModelConfig.model_validate(_node_model(odd_server, model_prefix="bare")))


def test_a_request_that_outlasts_timeout_s_fails_at_once_and_counts(odd_server):
    from streamclf.remote.client import TritonClassifier

    node = TritonClassifier(ModelConfig.model_validate(_node_model(odd_server, model_prefix="slow", timeout_s=0.5)))
    frame = np.zeros((32, 32, 3), np.uint8)
    started = time.monotonic()
    with pytest.raises(InferenceUnavailable, match="DEADLINE_EXCEEDED"):
        node.embed_images([frame], bgr=True)
    assert time.monotonic() - started < 1.8
    status = node.backend_status()
    assert not status.connected and status.failed_requests == 1 and "DEADLINE_EXCEEDED" in status.last_error
    # The next call reconnects at once (the first failure of a working connection is retried immediately).
    with pytest.raises(InferenceUnavailable):
        node.embed_images([frame], bgr=True)
    assert node.backend_status().failed_requests == 2


def test_pip_install_streamclf_triton_is_a_node_without_torch(server, tmp_path, broker, prefix, collector):
    """The install the README gives a node: a fresh venv, ``pip install 'streamclf[triton]'``, nothing else."""
    import subprocess
    import sys

    from tests.conftest import REPO, write_config

    venv = tmp_path / "node-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{REPO}[triton]"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"
    video = make_video(tmp_path / "v.mp4", 8, size=(320, 240))
    cfg = base_config(tmp_path, broker, prefix, {"cam": {"source": str(video), "fps": 10, "realtime": False}},
                      LABELS, model=_node_model(server.url))
    node = subprocess.run([str(venv / "bin" / "streamclf"), "run", "-c", str(write_config(tmp_path / "n.yaml", cfg))],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert node.returncode == 0, node.stderr[-3000:]
    assert "8 frames classified" in node.stderr
    collector.wait_for(lambda m: len(collector.json_messages(f"{prefix}/cam/detection")) >= 16, timeout=10)


def test_two_nodes_share_one_server_and_one_broker_each_with_its_own_topics(server, tiny_clip_dir, tmp_path, broker,
                                                                           prefix, start_daemon):
    from tests.test_nodes_end_to_end import _all_retained, _camera_topics, _node_cfg, _node_topics, _video

    ha, base = f"{prefix}ha", f"streamclf_{prefix}"
    video = _video(tmp_path / "v.mp4")
    nodes = {"n1": ["gate", "yard"], "n2": ["porch"]}
    with MqttCollector(broker.host, broker.port, f"{prefix}/#") as seen:
        daemons = [start_daemon(_node_cfg(tiny_clip_dir, broker, prefix, ha, node, cams, video,
                                          model=_node_model(server.url)))
                   for node, cams in nodes.items()]
        expected = {t for node, cams in nodes.items() for t in _node_topics(prefix, ha, base, node)
                    | set().union(*(_camera_topics(prefix, ha, base, c) for c in cams))}
        wait_until(lambda: expected <= set(_all_retained(broker, prefix, ha)), 90, "both nodes' retained topics")
        for cams in nodes.values():
            for cam in cams:  # every camera classified through the one server
                seen.wait_for(lambda m, cam=cam: any(t == f"{prefix}/{cam}/detection" for t, _, _ in m), timeout=60)
        retained = _all_retained(broker, prefix, ha)
        for node, cams in nodes.items():
            assert set(json.loads(retained[f"{prefix}/nodes/{node}"])["cameras"]) == set(cams)
            for cam in cams:
                device = json.loads(retained[f"{ha}/switch/{base}/{cam}_enabled/config"])["device"]
                assert device["via_device"] == f"{base}-node-{node}"
        assert not [t for t, p, _ in seen.all if not p and t in expected]  # neither deleted the other's topics
    for d in daemons:
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.output[-3000:]
        assert "Traceback" not in d.output and "conflict" not in d.output.lower()


def test_grpc_over_mutual_tls(tiny_clip_dir, tmp_path):
    """Frames cross buildings: with serve.tls_* a node needs the CA and its own certificate, and
    Triton's plain-HTTP endpoint answers on loopback only."""
    from streamclf.remote.client import TritonClassifier
    from tests.servers.tls import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    serve = TritonServe(tiny_clip_dir, tmp_path / "triton", tls=tls, address="0.0.0.0").start()
    try:
        url = f"localhost:{serve.grpc_port}"  # the certificate names localhost and 127.0.0.1
        node = TritonClassifier(ModelConfig.model_validate(_node_model(
            url, tls_ca_certs=str(tls.ca), tls_client_cert=str(tls.client_cert), tls_client_key=str(tls.client_key))))
        labels = node.encode_labels({"a": ["a red object"], "b": ["a blue object"]})
        scores = node.score(node.embed_images([np.zeros((64, 64, 3), np.uint8)], bgr=True), labels, [["a", "b"]])
        assert abs(sum(scores[0].values()) - 1) < 1e-5 and node.backend_status().connected

        plain = TritonClassifier(ModelConfig.model_validate(_node_model(url)))
        no_cert = TritonClassifier(ModelConfig.model_validate(_node_model(url, tls_ca_certs=str(tls.ca))))
        for refused in (plain, no_cert):  # not fatal at start (a server may come later), but never connected
            status = refused.backend_status()
            assert not status.connected and status.last_error, status
            with pytest.raises(InferenceUnavailable):
                refused.embed_images([np.zeros((64, 64, 3), np.uint8)], bgr=True)
        assert _listening(serve.http_port) == {"127.0.0.1"}
        grpc = _listening(serve.grpc_port)
        assert grpc and grpc <= {"*", "0.0.0.0", "[::]"}  # every address, as serve.address says
    finally:
        assert serve.stop() == 0, serve.output[-3000:]


def _listening(port: int) -> set[str]:
    """The addresses a TCP port is bound to, as ``ss`` lists them."""
    import subprocess

    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}


def test_tls_files_of_a_node_are_checked_with_the_config(tmp_path):
    from streamclf.config import ConfigError, parse_config

    text = f"""
model:
  backend: triton
  triton:
    url: gpu-box:8001
    tls_ca_certs: {tmp_path}/missing-ca.pem
labels:
  a: {{prompts: [x]}}
  b: {{prompts: [y]}}
cameras:
  c: {{source: /dev/null}}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, env={})
    assert "model.triton.tls_ca_certs" in str(err.value) and "missing-ca.pem" in str(err.value)
    assert "line 6" in str(err.value)


def test_an_answer_of_other_shapes_than_declared_is_unavailable_not_a_crash(odd_server):
    """A server whose answer does not fit (rows, width) must not raise into the pipeline's inference thread."""
    from streamclf.remote.client import TritonClassifier

    node = TritonClassifier(ModelConfig.model_validate(_node_model(odd_server, model_prefix="short")))
    with pytest.raises(InferenceUnavailable, match=r"short_image.*\(2, 8\).*\(3, 16\)"):
        node.embed_images([np.zeros((32, 32, 3), np.uint8)] * 3, bgr=True)
    status = node.backend_status()
    assert not status.connected and status.failed_requests == 1


def test_a_request_on_a_channel_another_thread_closed_is_unavailable_not_a_crash(odd_server):
    """The control thread's request fails and closes the channel while the inference thread holds the same
    client: gRPC then raises ValueError ("closed channel"), which must not kill the inference thread."""
    from streamclf.remote.client import TritonClassifier

    node = TritonClassifier(ModelConfig.model_validate(_node_model(odd_server, model_prefix="slow")))
    client, _ = node._conn.client()  # noqa: SLF001  # what the inference thread holds between its two steps
    node._conn.failed(client, RuntimeError("the control thread's request timed out"))  # noqa: SLF001
    node._conn.client = lambda: (client, node._first_info)  # type: ignore[method-assign]  # noqa: SLF001
    with pytest.raises(InferenceUnavailable):
        node.encode_prompts(["a red object"])


def test_a_server_without_the_prefixs_models_is_a_setup_error(server):
    from streamclf.remote.client import TritonClassifier

    with pytest.raises(ModelLoadError) as err:
        TritonClassifier(ModelConfig.model_validate(_node_model(server.url, model_prefix="elsewhere")))
    message = str(err.value)
    assert "has no model elsewhere_info" in message and "model_prefix is 'elsewhere'" in message
