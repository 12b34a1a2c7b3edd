"""Zones crop the right pixels, and the batch classifier classifies each crop as its own image in one batch."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from streamclf.alerts import AlertPublisher
from streamclf.batch_classifier import BatchClassifier
from streamclf.batching import Batcher
from streamclf.config import Config, ModelConfig
from streamclf.decisions import Decider
from streamclf.entities import Frame
from streamclf.model import ClipClassifier
from streamclf.mqtt_client import MqttClient
from streamclf.observer import PipelineObserver
from streamclf.state import BatchState, PipelineState
from streamclf.zones import Zone, ZoneCropper


def pattern(width: int = 320, height: int = 240) -> np.ndarray:
    """Every pixel different enough to tell where a crop came from."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x // 256) * 64 + (y // 256) * 16], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    "box, normalized, size, expected",
    [
        ((0, 0, 1, 1), True, (320, 240), (0, 0, 320, 240)),
        ((0, 0, 0.5, 1), True, (320, 240), (0, 0, 160, 240)),
        ((0.5, 0.25, 1, 0.75), True, (320, 240), (160, 60, 320, 180)),
        ((0.1, 0.1, 0.2, 0.2), True, (333, 111), (33, 11, 67, 23)),  # partly covered pixels are kept
        ((10, 20, 110, 220), False, (320, 240), (10, 20, 110, 220)),
        ((300, 200, 400, 300), False, (320, 240), (300, 200, 320, 240)),  # clipped to the frame
        ((400, 0, 500, 100), False, (320, 240), None),  # outside the frame
    ],
)
def test_pixel_box(box, normalized, size, expected):
    assert Zone("z", box, normalized).pixel_box(*size) == expected


@pytest.mark.parametrize("box, normalized", [((0.5, 0, 0.5, 1), True), ((0, 0, 2, 1), True), ((-1, 0, 5, 5), False)])
def test_invalid_zone_boxes_are_rejected(box, normalized):
    with pytest.raises(ValueError):
        Zone("z", box, normalized)


def test_crop_is_exactly_the_frame_pixels():
    image = pattern()
    crop = Zone("porch", (0.25, 0.5, 0.75, 1.0)).crop(image)
    assert crop.shape == (120, 160, 3) and crop.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(crop, image[120:240, 80:240])
    np.testing.assert_array_equal(Zone("px", (5, 7, 9, 12), False).crop(image), image[7:12, 5:9])


def _config(tiny_clip_dir, tmp_path, zones: dict) -> Config:
    return Config.model_validate(yaml.safe_load(f"""
        mqtt: {{host: 127.0.0.1, port: 1}}
        model: {{name: "{tiny_clip_dir}", device: cpu, precision: fp32}}
        labels:
          red_thing: {{prompts: ["a red object"]}}
          blue_thing: {{prompts: ["a blue object"]}}
        cameras:
          zoned: {{source: "{tmp_path}/a.mp4", zones: {zones}}}
          whole: {{source: "{tmp_path}/b.mp4"}}
        events: {{snapshots: {{enabled: false}}}}
    """))


def test_zone_cropper_expands_zoned_cameras_only(tiny_clip_dir, tmp_path):
    cfg = _config(tiny_clip_dir, tmp_path, {"left": {"box": [0, 0, 0.5, 1]},
                                            "far": {"box": [1000, 0, 1100, 10], "coordinates": "pixels"}})
    image = pattern()
    frames = [Frame("zoned", image, 0, 0.0, 0.0), Frame("whole", image, 0, 0.0, 0.0)]
    cropper = ZoneCropper(cfg.cameras)
    items = cropper.expand(frames)
    assert [(i.frame.camera, i.zone) for i in items] == [("zoned", "left"), ("whole", None)]
    np.testing.assert_array_equal(items[0].image, image[:, :160])
    assert items[1].image is image
    assert cropper.skipped_outside == 1


def test_batch_classifier_classifies_each_zone_as_its_own_image_in_one_batch(tiny_clip_dir, tmp_path):
    cfg = _config(tiny_clip_dir, tmp_path, {"left": {"box": [0, 0, 0.5, 1]},
                                            "right": {"box": [160, 0, 320, 240], "coordinates": "pixels"}})
    classifier = ClipClassifier(ModelConfig(name=str(tiny_clip_dir), device="cpu", precision="fp32"))
    label_set = classifier.encode_labels(cfg.label_prompts())
    alerts = AlertPublisher(MqttClient(cfg.mqtt), cfg)  # never started: the sink under test is `seen`
    state = PipelineState(BatchState(cfg, label_set, ZoneCropper(cfg.cameras)), Decider(cfg), alerts, None)
    seen = []
    batches = BatchClassifier(classifier, state, Batcher(4, 0.05), None, [seen.append], PipelineObserver())
    calls = []
    embed = classifier.embed_images
    def counting_embed(images, bgr, prepared=None):
        calls.append(len(images))
        return embed(images, bgr, prepared)

    classifier.embed_images = counting_embed

    image = pattern()
    image[:, :160] = (200, 30, 30)  # a different scene in each half
    image[:, 160:, 2] = 220
    batches.classify([Frame("zoned", image, 3, 0.3, 0.0), Frame("whole", image, 4, 0.4, 0.0)])

    assert calls == [3]  # two zones and one whole frame, one model call
    assert [(c.camera, c.zone, c.frame_index) for c in seen] == [("zoned", "left", 3), ("zoned", "right", 3),
                                                                  ("whole", None, 4)]
    crops = [image[:, :160], image[:, 160:], image]
    for c, crop in zip(seen, crops, strict=True):
        np.testing.assert_array_equal(c.image, crop)
        alone = classifier.score(embed([crop], bgr=True), label_set, [["red_thing", "blue_thing"]])[0]
        assert c.scores == pytest.approx(alone, abs=1e-5)
    assert seen[0].scores != pytest.approx(seen[1].scores, abs=1e-6)  # the halves really differ
    assert batches.counters().frames_classified_by_camera == {"zoned": 1, "whole": 1}
