"""Both preprocessors against CLIPImageProcessor (PIL), and their buffer reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamclf.model.preprocess import BatchPreprocessor, DeviceBatchPreprocessor, PreprocessSpec

CPU = torch.device("cpu")


def _smooth(rng, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.float64)
    for c in range(3):
        fx, fy, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6)
        img[..., c] = 127.5 + 120 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + ph)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("PIL")
    from transformers import CLIPImageProcessorPil

    from tests.tiny_clip import PREPROCESSOR

    return CLIPImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [_smooth(rng, 480, 640), _smooth(rng, 720, 1280), _smooth(rng, 224, 224), _smooth(rng, 640, 480),
            _smooth(rng, 100, 300)]


@pytest.mark.parametrize(
    "preprocessor, max_abs_err",
    # Normalised units (one 0..255 level is about 0.015). Both use PIL's filter (antialiased
    # bicubic, torch's uint8 kernel on the CPU): measured max 2 levels, mean under 0.01 level.
    [(DeviceBatchPreprocessor, 0.05), (BatchPreprocessor, 0.05)],
)
def test_matches_clip_image_processor(preprocessor, max_abs_err, reference):
    images = _images(0)
    ours = preprocessor(PreprocessSpec(), CPU)(images)
    theirs = reference(images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (5, 3, 224, 224)
    err = (ours - theirs).abs()
    assert err.max().item() < max_abs_err
    assert err.mean().item() < max_abs_err / 10


@pytest.mark.parametrize("preprocessor", [DeviceBatchPreprocessor, BatchPreprocessor])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bgr_frames_give_the_batch_of_their_rgb_originals(preprocessor, dtype):
    """Decoded frames are BGR; the batch the model sees is RGB, bit for bit the same as from RGB input."""
    rgb = _images(4)
    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in rgb]
    pre = preprocessor(PreprocessSpec(), CPU, dtype)
    from_rgb = pre(rgb).clone()
    assert torch.equal(pre(bgr, bgr=True), from_rgb)
    assert not torch.equal(pre(bgr), from_rgb)  # the flag is what swaps them


@pytest.mark.parametrize("preprocessor", [DeviceBatchPreprocessor, BatchPreprocessor])
def test_batches_are_not_reallocated(preprocessor):
    pre = preprocessor(PreprocessSpec(), CPU, torch.bfloat16)
    first = pre(_images(1))
    ptr = first.data_ptr()
    second = pre(_images(2))
    assert second.data_ptr() == ptr and second.dtype == torch.bfloat16


def test_device_path_keeps_batch_order_with_mixed_sizes():
    images = _images(3)
    pre = DeviceBatchPreprocessor(PreprocessSpec(), CPU)
    batch = pre(images).clone()
    for i, image in enumerate(images):
        assert torch.equal(pre([image])[0], batch[i])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frames_prepared_on_another_thread_give_the_same_batch(dtype):
    """Capture threads may resize and crop ahead; the batch must not change by a bit, with or without them."""
    import threading

    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in _images(5)]
    pre = BatchPreprocessor(PreprocessSpec(), CPU, dtype)
    expected = pre(bgr, bgr=True).clone()
    prepared: list = [None] * len(bgr)

    def prepare_odd_ones():
        for i in range(1, len(bgr), 2):
            prepared[i] = pre.prepare(bgr[i])

    worker = threading.Thread(target=prepare_odd_ones)
    worker.start()
    worker.join()
    assert prepared[1].shape == (3, 224, 224) and prepared[0] is None
    assert torch.equal(pre(bgr, bgr=True, prepared=prepared), expected)
    # The prepared crop is what is used: a wrong one shows up in the batch.
    prepared[1] = torch.zeros_like(prepared[1])
    assert not torch.equal(pre(bgr, bgr=True, prepared=prepared)[1], expected[1])


def test_the_device_path_prepares_nothing_ahead():
    assert DeviceBatchPreprocessor(PreprocessSpec(), CPU).prepare is None
