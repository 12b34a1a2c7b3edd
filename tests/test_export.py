"""streamclf export (streamclf/remote/export.py): the model repository a stock Triton serves.

The exported configs parse with Triton's own schema; the ONNX graphs, run by ONNX Runtime on what a
node sends, give the local model's embeddings; the text model tokenizes as the local model does;
and the Python-backend models load and answer in the real tritonserver PyTriton bundles.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from streamclf.cli import main
from streamclf.config import ModelConfig
from streamclf.model import ClipClassifier
from streamclf.remote import protocol as p
from streamclf.remote.export import ENCODER
from streamclf.remote.pixels import prepare_frame
from streamclf.remote.triton_models import text_model
from tests.tiny_siglip import build_tiny_siglip

onnxruntime = pytest.importorskip("onnxruntime")

PREFIX = "cams"
SERVE = {"max_batch_size": 16, "preferred_batch_sizes": [4, 8], "max_queue_delay_us": 500, "instances": 2}
LONG_PROMPT = "a photo of " + "a very long winding road " * 30  # far past 77 (CLIP) and 64 (SigLIP) tokens
PROMPTS = ["a cat", "a photo of a dog on a mat", "", LONG_PROMPT, "zebra crossing 42"]


def _export(model_dir: Path, out: Path) -> Path:
    """Export through the command line, as a user does."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": str(model_dir), "triton": {"model_prefix": PREFIX}},
                                      "serve": SERVE}))
    assert main(["export", "-c", str(config), str(out)]) == 0
    return out


@pytest.fixture(scope="module", params=["clip", "siglip"])
def family(request, tiny_clip_dir, tmp_path_factory):
    """(exported repository, the local classifier of the same checkpoint) for each family."""
    if request.param == "clip":
        model_dir = tiny_clip_dir
    else:
        model_dir = build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))
    repo = _export(model_dir, tmp_path_factory.mktemp("export") / "repo")
    return repo, ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision="fp32"))


def _session(repo: Path, which: str):
    path = repo / p.model_name(PREFIX, which) / "1" / "model.onnx"
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _frames(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(480, 640, 3), (1080, 1920, 3), (300, 200, 3)]]


def test_image_model_embeds_as_the_local_model(family):
    repo, local = family
    frames = _frames(0)
    # What a node sends: its frames resized and cropped (here by the local path's own code), uint8, planar RGB.
    prepare = prepare_frame(local.spec, bgr=True, use_torch=True)
    pixels = np.stack([prepare(f) for f in frames])
    got = _session(repo, p.IMAGE).run(None, {p.PIXELS: pixels})[0]
    want = local.embed_images(frames, bgr=True).numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_text_model_tokenizes_and_embeds_as_the_local_model(family):
    repo, local = family
    version = repo / p.model_name(PREFIX, p.TEXT) / "1"
    tokenizer, settings = text_model.load_tokenizer(version)
    tokens = text_model.tokenize(tokenizer, settings, PROMPTS)
    want_tokens = local._tokens(PROMPTS)  # noqa: SLF001 - the local model's tokenization is the reference
    assert sorted(tokens) == sorted(want_tokens)
    for name, value in tokens.items():
        assert np.array_equal(value, want_tokens[name].numpy()), name
    assert tokens["input_ids"].shape[1] == local.max_text_tokens  # the long prompt is cut to fit
    got = _session(repo, ENCODER).run(None, tokens)[0]
    want = local.encode_prompts(PROMPTS).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_info_model_describes_the_checkpoint(family):
    repo, local = family
    info = p.ServerInfo.from_json((repo / p.model_name(PREFIX, p.INFO) / "1" / "info.json").read_text())
    assert (info.model_type, info.score_kind, info.preprocess) == (local.model_type, local.score_kind, local.spec)
    assert info.embedding_dim == local.encode_prompts(["a"]).shape[-1]
    assert info.max_batch_size == SERVE["max_batch_size"]
    assert info.logit_scale == pytest.approx(local.logit_scale) and info.logit_bias == pytest.approx(local.logit_bias)


def _config(repo: Path, name: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_configs_parse_with_tritons_schema(family):
    from tritonclient.grpc import model_config_pb2 as mc

    repo, local = family
    dim, spec = local.encode_prompts(["a"]).shape[-1], local.spec
    image = _config(repo, f"{PREFIX}_image")
    assert (image.name, image.platform, image.max_batch_size) == (f"{PREFIX}_image", "onnxruntime_onnx", 16)
    assert [(t.name, t.data_type, list(t.dims)) for t in image.input] == [
        (p.PIXELS, mc.TYPE_UINT8, [3, spec.crop_height, spec.crop_width])]
    assert [(t.name, t.data_type, list(t.dims)) for t in image.output] == [(p.EMBEDDINGS, mc.TYPE_FP32, [dim])]
    assert list(image.dynamic_batching.preferred_batch_size) == [4, 8]
    assert image.dynamic_batching.max_queue_delay_microseconds == 500
    assert [g.count for g in image.instance_group] == [2]
    text = _config(repo, f"{PREFIX}_text")
    assert (text.backend, text.max_batch_size) == ("python", 16)
    assert [(t.name, t.data_type, list(t.dims)) for t in text.input] == [(p.PROMPTS, mc.TYPE_STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in text.output] == [(p.EMBEDDINGS, mc.TYPE_FP32, [dim])]
    encoder = _config(repo, f"{PREFIX}_text_encoder")
    assert encoder.platform == "onnxruntime_onnx"
    assert {t.name for t in encoder.input} == set(text_model.tokenize(
        *text_model.load_tokenizer(repo / f"{PREFIX}_text" / "1"), ["a"]))
    info = _config(repo, f"{PREFIX}_info")
    assert info.backend == "python"
    assert [(t.name, t.data_type, list(t.dims)) for t in info.input] == [(p.PROTOCOL_INPUT, mc.TYPE_STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in info.output] == [(p.INFO_OUTPUT, mc.TYPE_STRING, [1])]


@pytest.mark.parametrize("config, why, rc", [
    ("model: {name: /nonexistent/clip-model}\n", "no such directory", 2),
    ("serve: {max_batch_size: 0}\n", "max_batch_size", 1),
])
def test_export_failures_say_why(tmp_path, capsys, config, why, rc):
    (tmp_path / "serve.yaml").write_text(config)
    assert main(["export", "-c", str(tmp_path / "serve.yaml"), str(tmp_path / "repo")]) == rc
    assert why in capsys.readouterr().err
    assert not (tmp_path / "repo" / "streamclf_image").exists()


# -- the real tritonserver (PyTriton's, which has the Python backend but not ONNX Runtime's) -------

# Stands in for the ONNX Runtime backend of a stock container: the same exported model.onnx, run by
# onnxruntime inside a Python-backend model, so the text model's call through Triton is exercised.
ENCODER_STAND_IN = '''
import numpy as np, onnxruntime, triton_python_backend_utils as pb_utils
from pathlib import Path

class TritonPythonModel:
    def initialize(self, args):
        model = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        out = []
        for r in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.names}
            emb = self.session.run(None, feeds)[0]
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("embeddings", emb)]))
        return out
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tritonserver(tmp_path):
    """Start PyTriton's tritonserver on a repository with the named models; yields a gRPC client factory."""
    pytriton = pytest.importorskip("pytriton.utils.distribution")
    grpcclient = pytest.importorskip("tritonclient.grpc")
    root = pytriton.get_root_module_path() / "tritonserver"
    backends = tmp_path / "backends"
    shutil.copytree(root / "backends", backends)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(pytriton.get_stub_path(version), backends / "python" / "triton_python_backend_stub")
    procs = []

    def start(repo: Path, models: list[str]):
        port = _free_port()
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   # the stub links libpython: this interpreter's, not the system's (see streamclf serve)
                   LD_LIBRARY_PATH=os.pathsep.join([sysconfig.get_config_var("LIBDIR"),
                                                    pytriton.get_libs_path().as_posix()]))
        cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={repo}", f"--backend-directory={backends}",
               "--model-control-mode=explicit", *[f"--load-model={m}" for m in models], f"--grpc-port={port}",
               f"--http-port={_free_port()}", f"--metrics-port={_free_port()}"]
        log = open(tmp_path / "triton.log", "w")  # closed with the process, below
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if all(client.is_model_ready(m) for m in models):
                    return client
            except Exception:  # not listening yet
                pass
            assert procs[-1][0].poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
            time.sleep(0.25)
        raise AssertionError("tritonserver did not load " + ", ".join(models) + ":\n"
                             + (tmp_path / "triton.log").read_text()[-3000:])

    yield start
    for proc, log in procs:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _infer(client, model: str, name: str, rows: list[bytes], output: str) -> np.ndarray:
    from tritonclient.grpc import InferInput

    request = InferInput(name, [len(rows), 1], "BYTES")
    request.set_data_from_numpy(np.array([[r] for r in rows], dtype=np.object_))
    return client.infer(model, [request]).as_numpy(output)


@pytest.mark.slow
def test_python_models_in_the_real_tritonserver(tiny_clip_dir, tmp_path, tritonserver):
    repo = _export(tiny_clip_dir, tmp_path / "repo")
    encoder = repo / f"{PREFIX}_text_encoder"
    config = (encoder / "config.pbtxt").read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"')
    (encoder / "config.pbtxt").write_text(config.replace("KIND_AUTO", "KIND_CPU"))
    (encoder / "1" / "model.py").write_text(ENCODER_STAND_IN)
    names = [p.model_name(PREFIX, w) for w in (p.INFO, p.TEXT)]
    client = tritonserver(repo, [*names, encoder.name])

    info = p.ServerInfo.from_json(_infer(client, names[0], p.PROTOCOL_INPUT, [p.PROTOCOL.encode()] * 2,
                                         p.INFO_OUTPUT)[1, 0])
    assert info.model == str(tiny_clip_dir) and info.model_type == "clip"
    text = client.get_model_metadata(names[1], as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in text["inputs"]] == [(p.PROMPTS, "BYTES", ["-1", "1"])]
    got = _infer(client, names[1], p.PROMPTS, [s.encode() for s in PROMPTS], p.EMBEDDINGS)
    local = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32"))
    assert np.abs(got - local.encode_prompts(PROMPTS).numpy()).max() < 1e-4
