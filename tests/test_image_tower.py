"""ImageTower computes what transformers' CLIP image forward computes, only cheaper.

Compared with ``visual_projection(vision_model(x).pooler_output)`` from the real transformers
classes, in fp32, on random inputs: the saved tiny model the daemon loads, and in-memory
towers of other shapes (more layers and heads, 16-pixel patches, other activations).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPVisionConfig, CLIPVisionModel

from streamclf.config import ModelConfig
from streamclf.model import ClipClassifier
from streamclf.model.image_tower import ImageTower, PackedLinear, cpu_can_pack


def _reference(vision_model, projection, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return projection(vision_model(pixel_values=x).pooler_output)


def _tower_output(vision_model, projection, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return ImageTower(vision_model, projection).eval()(x)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_saved_tiny_model_matches_transformers(tiny_clip_dir, batch):
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    expected = _reference(model.vision_model, model.visual_projection, x)
    got = _tower_output(model.vision_model, model.visual_projection, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "config",
    [
        dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=64,
             patch_size=16, hidden_act="quick_gelu"),
        dict(hidden_size=48, intermediate_size=128, num_hidden_layers=1, num_attention_heads=3, image_size=96,
             patch_size=32, hidden_act="gelu"),
    ],
    ids=["3-layers-16px-patches", "1-layer-gelu"],
)
def test_other_shapes_match_transformers(config):
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(**config)).eval()
    projection = torch.nn.Linear(config["hidden_size"], 24, bias=False)
    x = torch.randn(5, 3, config["image_size"], config["image_size"])
    torch.testing.assert_close(_tower_output(vision, projection, x), _reference(vision, projection, x),
                               atol=2e-5, rtol=1e-4)


def test_last_layer_computes_the_class_token_only(tiny_clip_dir):
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tower = ImageTower(model.vision_model, model.visual_projection)
    *earlier, last = tower.layers
    assert last.cls_only and not any(layer.cls_only for layer in earlier)
    seen = []
    last.fc1.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    with torch.inference_mode():
        tower(torch.zeros(4, 3, 224, 224))
    assert seen == [(4, 1, model.config.vision_config.hidden_size)]


def test_wrong_input_size_is_refused(tiny_clip_dir):
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tower = ImageTower(model.vision_model, model.visual_projection)
    with pytest.raises(ValueError, match="does not match the model's 3x224x224"):
        tower(torch.zeros(1, 3, 112, 112))


def test_unusual_layout_falls_back_to_transformers_forward(tiny_clip_dir, monkeypatch, caplog):
    images = [np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(3)]
    cfg = ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32")
    fast = ClipClassifier(cfg).embed_images(images)

    def refuse(*args, **kwargs):
        raise ValueError("patch embedding is not a plain non-overlapping convolution")

    monkeypatch.setattr(ImageTower, "__init__", refuse)
    with caplog.at_level("WARNING", logger="streamclf.model"):
        fallback = ClipClassifier(cfg)
    assert "using transformers' forward (patch embedding" in caplog.text
    assert fallback.model.vision_model is not None
    torch.testing.assert_close(fallback.embed_images(images), fast, atol=1e-5, rtol=1e-4)


def _shifted(self, pixel_values):
    return _REAL_FORWARD(self, pixel_values) + 1.0  # as if a kernel on this device computed something else


def _failing(self, pixel_values):
    raise RuntimeError("no kernel image is available for execution on the device")


_REAL_FORWARD = ImageTower.forward


@pytest.mark.parametrize("sabotage, message", [
    (_shifted, "image tower: disagrees with transformers' forward on cpu (cosine"),
    (_failing, "image tower: fails on cpu (no kernel image is available for execution on the device)"),
])
def test_a_tower_that_is_wrong_on_the_device_falls_back_to_transformers_forward(tiny_clip_dir, monkeypatch, caplog,
                                                                                 sabotage, message):
    """The tower is checked against transformers' forward at every load, on the device it will run on."""
    images = [np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(3)]
    cfg = ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32")
    good = ClipClassifier(cfg).embed_images(images)
    monkeypatch.setattr(ImageTower, "forward", sabotage)
    with caplog.at_level("WARNING", logger="streamclf.model"):
        clf = ClipClassifier(cfg)
    assert message in caplog.text
    assert clf.model.vision_model is not None and not isinstance(clf.image_tower, ImageTower)
    torch.testing.assert_close(clf.embed_images(images), good, atol=1e-5, rtol=1e-4)


def _tiny_tower(tiny_clip_dir) -> ImageTower:
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    return ImageTower(model.vision_model, model.visual_projection).eval()


NO_BF16_PACKING = pytest.mark.skipif(not cpu_can_pack(torch.bfloat16),
                                     reason="this CPU cannot pack bf16 (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")


@pytest.mark.parametrize("dtype, batch, tolerance", [
    (torch.float32, 4, 1e-5), pytest.param(torch.bfloat16, 4, 1e-4, marks=NO_BF16_PACKING),
    (torch.float32, 1, 1e-5), pytest.param(torch.bfloat16, 7, 1e-4, marks=NO_BF16_PACKING),
])
def test_packed_tower_matches_plain_tower(tiny_clip_dir, dtype, batch, tolerance):
    """Packed for batch 4, called with 1, 4 and 7 frames: oneDNN's packing is a layout, not a batch size."""
    tower = _tiny_tower(tiny_clip_dir).to(dtype)
    packed = tower.packed_for_cpu(batch_size=4)
    assert isinstance(packed.layers[0].qkv_proj, PackedLinear) and isinstance(packed.projection, PackedLinear)
    assert isinstance(packed.layers[0].activation, torch.nn.Identity)  # quick_gelu runs inside fc1
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.inference_mode():
        plain, fast = tower(x).float(), packed(x).float()
    cosine = torch.nn.functional.cosine_similarity(plain, fast, dim=-1)
    assert cosine.min().item() >= 1 - tolerance
    assert torch.equal(tower(x), tower(x))  # the plain tower is left as it was


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NO_BF16_PACKING)])
def test_classifier_packs_the_cpu_tower(tiny_clip_dir, precision):
    clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision=precision))
    assert isinstance(clf.image_tower.layers[0].fc1, PackedLinear)


def test_bf16_on_a_cpu_that_cannot_pack_it_runs_the_plain_tower_quietly(tiny_clip_dir, monkeypatch, caplog):
    """An AVX2-only CPU refuses to pack bf16: that is not a problem to report, just the plain tower.

    Found when the suite first ran on such a CPU: the packed-tower tests assumed AVX-512.
    """
    import streamclf.model.checks as checks

    monkeypatch.setattr(checks, "cpu_can_pack", lambda dtype: dtype == torch.float32)
    with caplog.at_level("INFO", logger="streamclf.model"):
        clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="bf16"))
    assert isinstance(clf.image_tower.layers[0].fc1, torch.nn.Linear)
    assert "image tower" not in caplog.text
    assert clf.embed_images([np.zeros((64, 64, 3), np.uint8)]).shape == (1, 16)


def test_classifier_keeps_the_plain_tower_when_packing_fails(tiny_clip_dir, monkeypatch, caplog):
    def broken(self, batch_size):
        raise RuntimeError("mkldnn::_reorder_linear_weight: no such operator")

    monkeypatch.setattr(ImageTower, "packed_for_cpu", broken)
    with caplog.at_level("INFO", logger="streamclf.model"):
        clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32"))
    assert "packed linear layers unavailable (mkldnn::_reorder_linear_weight: no such operator)" in caplog.text
    assert isinstance(clf.image_tower.layers[0].fc1, torch.nn.Linear)
    assert clf.embed_images([np.zeros((64, 64, 3), np.uint8)]).shape == (1, 16)


def test_classifier_keeps_the_plain_tower_when_packed_disagrees(tiny_clip_dir, monkeypatch, caplog):
    real = ImageTower.packed_for_cpu

    def wrong(self, batch_size):
        tower = real(self, batch_size)
        bias = tower.layers[0].fc2.bias  # as if a packed kernel computed something else
        bias.add_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)) * 5)
        return tower

    monkeypatch.setattr(ImageTower, "packed_for_cpu", wrong)
    with caplog.at_level("WARNING", logger="streamclf.model"):
        clf = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32"))
    assert "packed linear layers disagree" in caplog.text
    assert isinstance(clf.image_tower.layers[0].fc1, torch.nn.Linear)
