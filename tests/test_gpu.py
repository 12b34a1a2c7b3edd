"""CUDA paths (the CUDA cases are skipped without a GPU; CI has none — run on a lent GPU with scripts/gpu_check.sh).

The tiny model runs through the same code as on the CPU: device preprocessing (uint8 frames
resized and normalised on the GPU) must match the host preprocessing, and fp16/bf16 image
embeddings must stay within cosine 0.999 of fp32, the bar ``precision: auto`` keeps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamclf.config import ModelConfig
from streamclf.model import ClipClassifier
from streamclf.model.cuda_graphs import CapturedGraph, GraphedEncoder, graph_buckets
from streamclf.model.image_tower import ImageTower
from streamclf.model.preprocess import BatchPreprocessor, DeviceBatchPreprocessor, PreprocessSpec

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(480, 640), (720, 1280), (224, 224)]
    out = []
    for i in range(n):
        h, w = shapes[i % len(shapes)]
        ramp = np.linspace(0, 255, h * w, dtype=np.float32).reshape(h, w)
        img = np.dstack([ramp, ramp[::-1], np.full((h, w), 40 * i, np.float32)]).astype(np.uint8)
        out.append(np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("device_name", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_device_preprocessing_matches_host_preprocessing(device_name):
    """DeviceBatchPreprocessor (whole frames to the device, resized there) against the host path."""
    spec = PreprocessSpec()
    frames = _frames()
    host = BatchPreprocessor(spec, torch.device("cpu"))(frames)
    device = DeviceBatchPreprocessor(spec, torch.device(device_name))(frames).float().cpu()
    assert device.shape == host.shape
    # Both are antialiased bicubic; rounding to uint8 differs by a level or two (1/255/std ~ 0.015).
    assert (device - host).abs().mean() < 0.02
    assert (device - host).abs().max() < 0.2


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precisions_stay_within_cosine_0_999_of_fp32(tiny_clip_dir, precision):
    frames = _frames()
    ref = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cuda", precision="fp32")).embed_images(frames)
    clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cuda", precision=precision))
    got = clf.embed_images(frames)
    assert got.device.type == "cuda" and ref.device.type == "cuda"
    cos = torch.nn.functional.cosine_similarity(got.float(), ref.float(), dim=-1)
    assert cos.min().item() >= 0.999, cos


@pytest.mark.parametrize("device_name", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_the_image_tower_passes_its_load_check_on_the_device(tiny_clip_dir, device_name, caplog):
    """At load the tower is compared with transformers' forward on the device; there it must agree,
    or the daemon would quietly run transformers' slower forward."""
    with caplog.at_level("WARNING", logger="streamclf.model"):
        clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device=device_name, precision="fp32"))
    assert "image tower" not in caplog.text
    assert isinstance(clf.image_tower, ImageTower) and clf.model.vision_model is None


@needs_cuda
def test_auto_picks_fp16_and_device_preprocessing_on_cuda(tiny_clip_dir):
    clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="auto", precision="auto"))
    assert clf.device.type == "cuda" and clf.precision == "fp16"
    assert isinstance(clf.preprocess, DeviceBatchPreprocessor)
    labels = clf.encode_labels({"a": ["a cat"], "b": ["a dog"]})
    scores = clf.score(clf.embed_images(_frames(3)), labels, [["a", "b"]] * 3)
    assert all(abs(sum(s.values()) - 1) < 1e-4 for s in scores)


# CUDA graphs (streamclf/model/cuda_graphs.py): bucket choice, padding and chunking are plain logic, checked
# here on any machine with a stand-in for the capture; the real capture is checked on CUDA below.


@pytest.mark.parametrize(
    "batch_size, buckets",
    [(1, (1,)), (2, (1, 2)), (8, (1, 2, 4, 8)), (12, (1, 2, 4, 8, 12)), (64, (1, 2, 4, 8, 16, 32, 64)),
     (0, ValueError)],
)
def test_graph_buckets(batch_size, buckets):
    if buckets is ValueError:
        with pytest.raises(ValueError, match="at least 1"):
            graph_buckets(batch_size)
    else:
        assert graph_buckets(batch_size) == buckets


class _EagerCapture(GraphedEncoder):
    """GraphedEncoder whose "graph" recomputes ``encode`` on its static input: no CUDA needed."""

    def _capture(self, n: int) -> CapturedGraph:
        inputs = torch.zeros((n, *self._row_shape), dtype=self._dtype)
        outputs = self._encode(inputs).clone()
        self.captured.append(n)

        def replay():
            self.replays.append(n)
            outputs.copy_(self._encode(inputs))

        return CapturedGraph(replay, inputs, outputs)

    def __init__(self, *args):
        self.captured, self.replays = [], []
        super().__init__(*args)


@pytest.mark.parametrize("n, replays", [(1, [1]), (3, [4]), (8, [8]), (5, [8]), (11, [8, 4]), (20, [8, 8, 4])])
def test_graphed_encoder_pads_to_the_smallest_bucket_and_chunks_larger_batches(n, replays):
    weight = torch.randn(3 * 4 * 4, 5, generator=torch.Generator().manual_seed(1))

    def encode(x):  # each row on its own, as the image tower is
        return torch.nn.functional.normalize(x.flatten(1) @ weight, dim=-1)

    graphed = _EagerCapture(encode, torch.zeros(1, 3, 4, 4), 8)
    assert graphed.captured == [8, 4, 2, 1]  # largest first: smaller ones reuse the pool
    first = torch.randn(8, 3, 4, 4)
    graphed(first)  # leaves rows in every bucket of 8 that a smaller batch does not overwrite
    graphed.replays.clear()
    pixels = torch.randn(n, 3, 4, 4)
    got = graphed(pixels)
    assert graphed.replays == replays
    assert torch.allclose(got, encode(pixels), atol=1e-6)
    graphed(torch.randn(8, 3, 4, 4))
    assert torch.allclose(got, encode(pixels), atol=1e-6), "a result must not change with the next replay"


def test_cuda_graphs_are_not_used_on_the_cpu(tiny_clip_dir):
    clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32", cuda_graphs=True))
    assert clf.cuda_graph_buckets == ()


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_graphs_give_the_eager_embeddings_for_every_batch_size(tiny_clip_dir, precision, caplog):
    frames = _frames(11)
    eager = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cuda", precision=precision,
                                       batch_size=8, cuda_graphs=False))
    with caplog.at_level("INFO", logger="streamclf.model"):
        graphed = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cuda", precision=precision,
                                             batch_size=8, cuda_graphs=True))
    assert eager.cuda_graph_buckets == ()
    assert graphed.cuda_graph_buckets == (1, 2, 4, 8)
    assert "CUDA graphs: captured for batch sizes 1,2,4,8" in caplog.text
    for n in (1, 3, 8, 5, 11, 2):  # a partly filled bucket after a full one; 11 runs as 8 + 4
        want = eager.embed_images(frames[:n])
        got = graphed.embed_images(frames[:n])
        assert got.shape == want.shape
        cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
        assert cos.min().item() >= 0.9999, (n, cos)
