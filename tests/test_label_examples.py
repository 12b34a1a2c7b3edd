"""Image examples in a label: their embeddings join the prompts', checked as config, re-encoded on change."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from streamclf.config import ConfigError, LabelExamples, ModelConfig, load_config
from streamclf.model import ClipClassifier
from tests.tiny_siglip import build_tiny_siglip


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="module", params=["clip", "siglip"])
def clf(request, tiny_clip_dir, siglip_dir):
    model_dir = tiny_clip_dir if request.param == "clip" else siglip_dir
    return ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision="fp32"))


def _scene(kind: str) -> np.ndarray:
    """Two scenes nothing alike: A, fine diagonal stripes in red and green; B, large blue and grey blocks."""
    if kind == "A":
        yy, xx = np.mgrid[0:240, 0:320]
        img = np.zeros((240, 320, 3), np.uint8)
        img[((xx + yy) // 6) % 2 == 0] = (0, 0, 255)
        img[((xx + yy) // 6) % 2 == 1] = (0, 255, 0)
        return img
    img = np.full((240, 320, 3), 128, np.uint8)
    img[:120, :160] = (255, 0, 0)
    img[120:, 160:] = (255, 0, 0)
    return img


@pytest.fixture
def scenes(tmp_path):
    paths = {k: tmp_path / f"{k}.png" for k in "AB"}
    for k, p in paths.items():
        cv2.imwrite(str(p), _scene(k))
    return paths


def test_examples_move_a_labels_score_toward_the_frames_they_resemble(clf, scenes):
    prompts = {"x": ["a photo of a thing"], "y": ["a photo of something else"]}
    frames = clf.embed_images([_scene("A"), _scene("B")], bgr=True)
    names = [list(prompts)] * 2
    without = clf.score(frames, clf.encode_labels(prompts), names)
    with_a = clf.score(frames, clf.encode_labels(prompts, {"x": LabelExamples((scenes["A"],), 0.5)}), names)
    assert with_a[0]["x"] > without[0]["x"] + 0.05, (without, with_a)  # x's score on frame A rises
    # Examples alone (weight 1): each label wins the frame its example shows, whatever the prompts say.
    both = clf.encode_labels(prompts, {"x": LabelExamples((scenes["A"],), 1.0),
                                       "y": LabelExamples((scenes["B"],), 1.0)})
    on_a, on_b = clf.score(frames, both, names)
    assert on_a["x"] > on_a["y"] and on_b["y"] > on_b["x"], (on_a, on_b)


def test_label_embedding_weights_text_and_image_means(clf, scenes):
    paths = (scenes["A"], scenes["B"])
    text = clf.encode_prompts(["a car", "a van"]).mean(0)
    images = clf.embed_images([_scene("A"), _scene("B")], bgr=True).mean(0)
    for w in (0.0, 0.25, 1.0):
        got = clf.encode_labels({"v": ["a car", "a van"]}, {"v": LabelExamples(paths, w)}).embeddings[0]
        expected = torch.nn.functional.normalize((1 - w) * text + w * images, dim=-1)
        assert torch.allclose(got, expected, atol=1e-5)


def test_unreadable_example_at_encode_names_it(clf, tmp_path):
    bad = tmp_path / "gone.png"
    with pytest.raises(ValueError, match="gone.png"):
        clf.encode_labels({"v": ["a van"]}, {"v": LabelExamples((bad,), 0.5)})


CONFIG = """\
labels:
  person:
    examples: {examples}
  car: {{}}
cameras: {{door: {{source: /dev/video0}}}}
"""


@pytest.mark.parametrize("examples, message", [
    ("[pics/A.png, 'pics/*.png']", None),
    ("[/abs/missing.png]", "'/abs/missing.png': no such file"),
    ("[pics/nothing.png]", "'pics/nothing.png': no such file"),
    ("['pics/*.jpg']", "'pics/*.jpg' matches no file"),
    ("[pics/corrupt.png]", "corrupt.png is not an image OpenCV can decode"),
    ("[]", "must be a non-empty list"),
])
def test_example_files_are_checked_with_the_config(tmp_path, examples, message):
    pics = tmp_path / "pics"
    pics.mkdir()
    cv2.imwrite(str(pics / "A.png"), _scene("A"))
    (pics / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(examples=examples))
    if message is None:
        (pics / "corrupt.png").unlink()
        cfg = load_config(path)
        assert cfg.label_examples(tmp_path) == {"person": LabelExamples((pics / "A.png", pics / "A.png"), 0.5)}
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and "line 3: labels.person.examples" in str(info.value)


@pytest.mark.parametrize("weight, ok", [(0, True), (1, True), (0.3, True), (-0.1, False), (1.5, False)])
def test_examples_weight_is_a_fraction(tmp_path, weight, ok):
    cv2.imwrite(str(tmp_path / "a.png"), _scene("A"))
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(examples=f"[a.png]\n    examples_weight: {weight}"))
    if ok:
        assert load_config(path).labels["person"].examples_weight == weight
    else:
        with pytest.raises(ConfigError, match="labels.person.examples_weight"):
            load_config(path)


def test_labels_set_with_a_missing_example_is_rejected_and_a_good_one_applied(tiny_clip_dir, tmp_path):
    from streamclf.config import LabelConfig, parse_config
    from streamclf.pipeline import Pipeline

    cv2.imwrite(str(tmp_path / "a.png"), _scene("A"))
    cfg = parse_config(f"model: {{name: '{tiny_clip_dir}', device: cpu, precision: fp32}}\n"
                       + CONFIG.format(examples="[a.png]"), base_dir=tmp_path)
    clf = ClipClassifier(cfg.model)
    pipeline = Pipeline(cfg, clf, base_dir=str(tmp_path))
    labels = dict(cfg.labels)
    labels["car"] = LabelConfig(examples=["missing.png"])
    with pytest.raises(ValueError, match="labels.car.examples: 'missing.png': no such file"):
        pipeline.replace_labels(labels)
    assert pipeline.cfg is cfg
    labels["car"] = LabelConfig(examples=["a.png"], examples_weight=1.0)
    assert pipeline.replace_labels(labels).labels["car"].examples == ["a.png"]
    assert pipeline.cfg.labels["car"].examples_weight == 1.0
