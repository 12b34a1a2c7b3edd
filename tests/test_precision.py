"""Each precision's image embeddings against fp32, on the tiny model and random inputs.

Bounds (cosine, worst image of 16): bf16 and fp16 >= 0.999 (what ``precision: auto`` promises);
int8 >= 0.995. Measured through ``embed_images`` on these inputs: tiny model bf16 0.99998,
fp16 (CPU autocast) 0.9999999, int8 0.99996; random-weight ViT-B/32 (benchmarks/model.py)
bf16 0.99994, fp16 0.9999998, int8 0.99974. int8 gets the looser
bound because dynamic quantisation's error grows with the activations' outliers, which trained
weights have and random ones do not: it stays opt-in.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streamclf.config import ModelConfig
from streamclf.model import INT8_MIN_COSINE, ClipClassifier, cpu_has_native_bf16, resolve_precision

BOUNDS = [("bf16", 0.999), ("fp16", 0.999), ("int8", 0.995)]


def _classifier(model_dir, precision: str) -> ClipClassifier:
    return ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision=precision))


@pytest.fixture(scope="module")
def random_images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    sizes = [(224, 224), (480, 640), (720, 1280), (300, 200)]
    return [rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8) for i in range(16)]


@pytest.fixture(scope="module")
def fp32_embeddings(tiny_clip_dir, random_images) -> torch.Tensor:
    return _classifier(tiny_clip_dir, "fp32").embed_images(random_images)


@pytest.mark.parametrize("precision, min_cosine", BOUNDS)
def test_embeddings_stay_close_to_fp32(precision, min_cosine, tiny_clip_dir, random_images, fp32_embeddings):
    clf = _classifier(tiny_clip_dir, precision)
    emb = clf.embed_images(random_images)
    assert emb.dtype == torch.float32 and emb.shape == fp32_embeddings.shape
    cosine = (emb * fp32_embeddings).sum(-1)
    assert cosine.min().item() >= min_cosine, f"{precision}: worst cosine {cosine.min().item():.6f}"


@pytest.mark.parametrize("precision, expected_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                                       ("fp16", torch.float32), ("int8", torch.float32)])
def test_bf16_runs_a_bf16_image_tower_on_the_cpu(precision, expected_dtype, tiny_clip_dir):
    clf = _classifier(tiny_clip_dir, precision)
    assert clf.model_dtype == expected_dtype
    assert next(clf.image_tower.parameters()).dtype == expected_dtype
    assert next(clf.model.text_model.parameters()).dtype == torch.float32  # text tower stays fp32


@pytest.mark.parametrize(
    "requested, device, native_bf16, expected",
    [
        ("auto", "cpu", True, "bf16"),
        ("auto", "cpu", False, "fp32"),
        ("auto", "cuda", False, "fp16"),
        ("int8", "cpu", True, "int8"),
        ("fp32", "cpu", True, "fp32"),
    ],
)
def test_auto_precision_choice(requested, device, native_bf16, expected, monkeypatch):
    monkeypatch.setattr("streamclf.model.device.cpu_has_native_bf16", lambda: native_bf16)
    assert resolve_precision(requested, torch.device(device)) == expected


def test_this_cpu_reports_its_bf16_support():
    flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_int8_is_checked_against_fp32_on_the_weights_it_loads(tiny_clip_dir, tmp_path, caplog):
    """The weights users load are not the tests' random ones: int8 measures itself at load and says so."""
    from transformers import CLIPModel

    caplog.set_level(logging.INFO, logger="streamclf.model")
    clf = _classifier(tiny_clip_dir, "int8")
    assert clf.int8_cosine >= INT8_MIN_COSINE
    assert "precision int8: image embeddings within cosine" in caplog.text
    assert _classifier(tiny_clip_dir, "fp32").int8_cosine is None

    # One outlier weight per MLP, as trained models have: per-tensor int8 then rounds the rest of
    # that layer to nothing, and the embeddings move far from fp32.
    outliers = tmp_path / "outliers"
    shutil.copytree(tiny_clip_dir, outliers)
    model = CLIPModel.from_pretrained(outliers)
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.mlp.fc1.weight[0, 0] = 1000 * layer.mlp.fc1.weight.abs().max()
    model.save_pretrained(outliers)
    caplog.clear()
    clf = _classifier(outliers, "int8")
    assert clf.int8_cosine < INT8_MIN_COSINE
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "precision int8 changes this model's image embeddings" in warnings[0].getMessage()
    assert "use precision auto or fp32" in warnings[0].getMessage()


def test_auto_says_when_it_falls_back_to_fp32(tiny_clip_dir, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="streamclf.model")
    monkeypatch.setattr("streamclf.model.device.cpu_has_native_bf16", lambda: False)
    assert _classifier(tiny_clip_dir, "auto").precision == "fp32"
    assert "precision auto is fp32 here: this CPU has no native bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr("streamclf.model.device.cpu_has_native_bf16", lambda: True)
    assert _classifier(tiny_clip_dir, "auto").precision == "bf16"
    assert "precision auto is fp32" not in caplog.text
