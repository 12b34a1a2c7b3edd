"""SigLIP checkpoints on a tiny real SigLIP: family by model_type, preprocessing, per-label scores, parity."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from streamclf.config import ConfigError, ModelConfig, parse_config
from streamclf.model import ClipClassifier, ModelLoadError
from streamclf.model.preprocess import PreprocessSpec
from tests.conftest import TEST_DEVICE, base_config
from tests.tiny_siglip import PREPROCESSOR, build_tiny_siglip

PROMPTS = ["a photo of a person", "a photo of a car", "an empty room"]


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="module")
def clf(siglip_dir):
    return ClipClassifier(ModelConfig(name=str(siglip_dir), device="cpu", precision="fp32"))


@pytest.fixture(scope="module")
def reference(siglip_dir):
    """transformers' own zero-shot pipeline on the same model."""
    pytest.importorskip("PIL")
    from transformers import pipeline

    return pipeline("zero-shot-image-classification", model=str(siglip_dir), device="cpu")


def _images(seed: int, shape: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = shape
    ramp = np.dstack([np.linspace(rng.integers(0, 255), rng.integers(0, 255), w * h).reshape(h, w)] * 3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.full((h, w, 3), 200, np.uint8), ramp.astype(np.uint8)]


def test_siglip_checkpoint_loads_as_a_per_label_model(clf):
    assert (clf.model_type, clf.score_kind) == ("siglip", "sigmoid")
    assert clf.preprocess.spec == PreprocessSpec(224, 224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), square=True)


# Resized frames: PIL's and torch's antialiased bicubic round a level apart here and there, so scores
# are close, not equal (the CLIP tests say the same of 640x480); enlarging (300x200) differs the most.
@pytest.mark.parametrize("shape, tolerance", [((224, 224), 1e-4), ((480, 640), 1e-3), ((300, 200), 0.01)])
def test_scores_equal_transformers_pipeline(clf, reference, shape, tolerance):
    from PIL import Image

    labels = clf.encode_labels({p: [p] for p in PROMPTS})
    images = _images(1, shape)
    ours = clf.score(clf.embed_images(images), labels, [PROMPTS] * len(images))
    for image, scores in zip(images, ours, strict=True):
        ref = {r["label"]: r["score"] for r in reference(Image.fromarray(image), candidate_labels=PROMPTS,
                                                         hypothesis_template="{}")}
        for p in PROMPTS:
            assert scores[p] == pytest.approx(ref[p], abs=tolerance)
        assert 0.01 < min(scores.values()) and max(scores.values()) < 0.99  # a comparison away from 0 and 1


@pytest.mark.parametrize("shape", [(224, 224), (480, 640)])
def test_preprocess_matches_siglip_image_processor(siglip_dir, clf, shape):
    pytest.importorskip("PIL")
    from transformers import SiglipImageProcessorPil

    ref = SiglipImageProcessorPil.from_pretrained(str(siglip_dir))
    images = _images(0, shape)
    theirs = ref(images=images, return_tensors="pt")["pixel_values"]
    ours = clf.preprocess(images)
    assert ours.shape == theirs.shape == (3, 3, 224, 224)
    # A whole frame squeezed to a square, not a centre crop: PIL and torch's uint8 kernels may round a level apart.
    assert (ours - theirs).abs().max() <= 2 / 255 / 0.5 + 1e-6


def test_square_spec_from_processor_settings_resizes_whole_frame():
    spec = PreprocessSpec.from_processor_dict(PREPROCESSOR)
    assert spec.square and spec.resized_size(480, 640) == (224, 224)
    clip = PreprocessSpec.from_processor_dict({"size": {"shortest_edge": 224}, "crop_size": 224})
    assert not clip.square and clip.resized_size(480, 640) == (224, 298)


def test_each_label_scores_on_its_own(clf):
    labels = clf.encode_labels({p: [p] for p in PROMPTS})
    emb = clf.embed_images(_images(2, (224, 224)))
    every = clf.score(emb, labels, [PROMPTS] * 3)
    alone = clf.score(emb, labels, [[PROMPTS[0]]] * 3)  # a camera with one label
    for all_scores, one in zip(every, alone, strict=True):
        assert one == {PROMPTS[0]: pytest.approx(all_scores[PROMPTS[0]], abs=1e-7)}
    assert any(abs(sum(s.values()) - 1) > 0.05 for s in every)  # not a softmax


@pytest.mark.parametrize("family", ["siglip", "clip"])
def test_prompts_past_the_text_limit_are_cut_with_a_warning(family, siglip_dir, tiny_clip_dir, caplog):
    model_dir = siglip_dir if family == "siglip" else tiny_clip_dir
    c = ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision="fp32"))
    long_prompt = "a " + "very " * 40 + "long prompt"  # a token per character: past 64 and 77
    with caplog.at_level(logging.WARNING, logger="streamclf.model"):
        emb = c.encode_labels({"long": [long_prompt], "short": ["a car"]}).embeddings
    assert torch.isfinite(emb).all()
    assert f"more than the {c.max_text_tokens} this model reads" in caplog.text and "very very" in caplog.text
    assert caplog.text.count("tokens, more than") == 1  # the short prompt is not reported


def test_configured_score_must_be_the_models(siglip_dir):
    with pytest.raises(ModelLoadError, match="set model.score: sigmoid or auto"):
        ClipClassifier(ModelConfig(name=str(siglip_dir), device="cpu", score="softmax"))


def test_siglip2_naflex_checkpoint_is_refused_with_the_alternative(tmp_path, siglip_dir):
    pytest.importorskip("transformers", minversion="4.50")
    from transformers import Siglip2Config

    d = tmp_path / "naflex"
    d.mkdir()
    (d / "config.json").write_text(Siglip2Config().to_json_string())
    with pytest.raises(ModelLoadError, match="siglip2-base-patch16-224"):
        ClipClassifier(ModelConfig(name=str(d), device="cpu"))


CONFIG = """
model: {{name: '{model}'{score}}}
labels: {{person: {{}}, car: {{}}}}
cameras: {{door: {{source: /dev/video0, labels: [person]}}}}
"""


def test_one_label_per_camera_is_allowed_only_for_per_label_models(siglip_dir, tiny_clip_dir):
    parse_config(CONFIG.format(model=siglip_dir, score=""))  # auto: config.json says siglip
    parse_config(CONFIG.format(model="google/siglip-not-downloaded", score=", score: sigmoid"))
    for model in (tiny_clip_dir, "google/not-here"):  # clip, and unknown: softmax's rules
        with pytest.raises(ConfigError) as info:
            parse_config(CONFIG.format(model=model, score=""))
        assert "cameras.door.labels: needs at least two labels" in str(info.value)
        assert "model.score: sigmoid" in str(info.value)


@pytest.mark.slow
def test_siglip_config_runs_end_to_end(tmp_path, broker, prefix, collector, siglip_dir, start_daemon):
    import cv2

    from tests.servers import make_video

    video = make_video(tmp_path / "v.mp4", 20, fps=10, size=(320, 240),
                       color_fn=lambda i: np.full((240, 320, 3), (0, 0, 200 - i), np.uint8))
    cv2.imwrite(str(tmp_path / "red.png"), np.full((120, 160, 3), (0, 0, 255), np.uint8))
    labels = {"red_thing": {"prompts": ["a red object"], "threshold": 0.0, "examples": ["red.png"]},
              "blue_thing": {"prompts": ["a blue object"], "threshold": 0.0}}
    cameras = {"only_red": {"source": str(video), "fps": 10, "realtime": False, "labels": ["red_thing"]},
               "both": {"source": str(video), "fps": 5, "realtime": False}}
    daemon = start_daemon(base_config(siglip_dir, broker, prefix, cameras, labels))
    assert daemon.wait(90) == 0, daemon.output
    assert "model_type" not in daemon.output and "ERROR" not in daemon.output, daemon.output

    def detections(camera):
        return [json.loads(p) for t, p, _ in collector.all if t == f"{prefix}/{camera}/detection"]

    collector.wait_for(lambda m: len(detections("only_red")) >= 20 and len(detections("both")) >= 20, timeout=20)
    only_red, both = detections("only_red"), detections("both")
    assert sorted({d["frame_index"] for d in only_red}) == list(range(20))
    assert all(set(d["scores"]) == {"red_thing"} for d in only_red)
    # Per-label scores: the same frame scores red_thing alike with or without blue_thing beside it.
    red_alone = {d["frame_index"]: d["scores"]["red_thing"] for d in only_red}
    for d in both:
        assert d["scores"]["red_thing"] == pytest.approx(red_alone[d["frame_index"]], abs=1e-6)
    assert any(abs(sum(d["scores"].values()) - 1) > 0.01 for d in both)
    assert TEST_DEVICE in daemon.output


@pytest.mark.parametrize("precision, min_cosine", [("bf16", 0.99), ("int8", 0.95)])
def test_siglip_runs_at_lower_precision_on_the_generic_path(siglip_dir, clf, precision, min_cosine):
    low = ClipClassifier(ModelConfig(name=str(siglip_dir), device="cpu", precision=precision))
    images = _images(4, (240, 320))
    cosine = torch.nn.functional.cosine_similarity(low.embed_images(images), clf.embed_images(images), dim=-1)
    assert cosine.min().item() > min_cosine
    assert low.encode_prompts(["a car"]).dtype == torch.float32


def test_device_preprocessing_resizes_to_the_square_like_the_host():
    from streamclf.model.preprocess import BatchPreprocessor, DeviceBatchPreprocessor

    spec = PreprocessSpec.from_processor_dict(PREPROCESSOR)
    images = _images(5, (480, 640)) + _images(6, (200, 300))
    host = BatchPreprocessor(spec, torch.device("cpu"))(images, bgr=True).clone()
    device = DeviceBatchPreprocessor(spec, torch.device("cpu"))(images, bgr=True)
    assert host.shape == device.shape == (6, 3, 224, 224)
    assert (host - device).abs().max() <= 1 / 255 / 0.5 + 1e-6  # a level of rounding apart at most
