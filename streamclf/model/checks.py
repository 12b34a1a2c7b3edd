"""Load-time checks: every faster form of the image tower is compared with a reference before it is used.

The tower (``image_tower``), its oneDNN-packed layers, CUDA graph replay and int8 quantisation
each compute the same embeddings as transformers' forward only up to rounding, on the devices
and torch builds they were tested on. A build or device they were never run on must cost
speed, not correctness: each is run on a few images at load and kept only if it agrees
(cosine similarity of the embeddings), else the slower reference is kept and the log says why.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import numpy as np
import torch

from streamclf.model.cuda_graphs import GraphedEncoder
from streamclf.model.image_tower import ImageTower, cpu_can_pack
from streamclf.model.loading import short_error
from streamclf.model.preprocess import BatchPreprocessor, PreprocessSpec

log = logging.getLogger(__name__)

# Our towers and transformers' forward differ only by float rounding (same weights, same operations).
TOWER_MIN_COSINE = 0.9999
# int8's error depends on the weights' outliers, so each model is checked when it loads; below this
# (the bound tests/test_precision.py holds int8 to) the daemon warns that scores will shift.
INT8_MIN_COSINE = 0.995


class TransformersImageTower(torch.nn.Module):
    """transformers' own image forward: the fallback for checkpoints ImageTower does not recognise."""

    def __init__(self, vision_model: torch.nn.Module, visual_projection: torch.nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.projection = visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class TransformersImageFeatures(torch.nn.Module):
    """The image tower of families other than CLIP, as transformers computes it: the vision model's
    pooled output (SigLIP's attention-pooling head included), which is what ``get_image_features``
    returns. Only the vision model is held, so a bf16/fp16 tower leaves the text tower in fp32."""

    def __init__(self, vision_model: torch.nn.Module):
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).pooler_output


def lowest_cosine(a: torch.nn.Module, b: torch.nn.Module, pixels: torch.Tensor) -> float:
    """The lowest cosine similarity between the embeddings ``a`` and ``b`` give the images in ``pixels``."""
    with torch.inference_mode():
        return torch.nn.functional.cosine_similarity(a(pixels).float(), b(pixels).float(), dim=-1).min().item()


def checked_image_tower(model) -> torch.nn.Module:
    """The pooled-embedding tower (see image_tower.py), or transformers' forward if the layout is unusual
    or the tower computes something else on this device.

    Both embed one random image at load, in fp32 on the model's device: the tower is our own
    rearrangement of CLIP's forward, and a device or torch build it was never run on must not
    score frames with it unchecked. The transformers vision model is released afterwards: the
    tower holds every weight it needs.
    """
    reference = TransformersImageTower(model.vision_model, model.visual_projection)
    try:
        tower = ImageTower(model.vision_model, model.visual_projection)
    except (ValueError, AttributeError, TypeError) as exc:
        log.warning("image tower: using transformers' forward (%s)", exc)
        return reference
    pixels = torch.randn(1, tower.channels, tower.image_size, tower.image_size,
                         generator=torch.Generator().manual_seed(0)).to(next(tower.parameters()).device)
    try:
        cosine = lowest_cosine(tower, reference, pixels)
    except (RuntimeError, NotImplementedError) as exc:
        log.warning("image tower: fails on %s (%s); using transformers' forward", pixels.device, short_error(exc))
        return reference
    if not cosine >= TOWER_MIN_COSINE:  # NaN included
        log.warning("image tower: disagrees with transformers' forward on %s (cosine %.5f); using transformers' "
                    "forward", pixels.device, cosine)
        return reference
    model.vision_model = None
    return tower


def check_pixels(spec: PreprocessSpec, device: torch.device) -> torch.Tensor:
    """Four preprocessed synthetic frames (fp32, on ``device``) to compare a precision with fp32 on:
    uniform noise, a smooth gradient, large flat blocks and fine stripes, so that both the
    high-contrast and the near-constant inputs a camera delivers are covered."""
    rng = np.random.default_rng(0)
    h, w = 240, 320
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.array([1.0, 0.6, 0.2], np.float32)
    gradient = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
    blocks = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((40, 40, 1))).astype(np.uint8)
    stripes = np.broadcast_to(((np.arange(w) // 3) % 2 * 255).astype(np.uint8)[None, :, None], (h, w, 3)).copy()
    images = [noise, gradient, blocks, stripes]
    return BatchPreprocessor(spec, device, torch.float32)(images).clone()


def quantized_int8(tower: torch.nn.Module, spec: PreprocessSpec, device: torch.device) -> tuple[torch.nn.Module, float]:
    """The tower with its Linear layers quantised to int8, and the lowest cosine of its embeddings to ``tower``'s.

    The tests can only check int8 on random weights; the weights a user loads are checked
    here, against the fp32 tower, on a few synthetic frames, and the result is logged, with a
    warning when it is below ``INT8_MIN_COSINE``.
    """
    from torch.ao.quantization import quantize_dynamic

    # torch.ao's eager quantisation is deprecated in favour of torchao, which we do not depend on;
    # it still works and is the fastest int8 path here, so its notice would only alarm the user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        quantized = quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8)  # a copy
    cosine = lowest_cosine(quantized, tower, check_pixels(spec, device))
    if not cosine >= INT8_MIN_COSINE:  # NaN included
        log.warning(
            "precision int8 changes this model's image embeddings more than expected (lowest cosine "
            "%.4f to fp32 on synthetic frames, below %.3f): scores will differ from fp32; use precision "
            "auto or fp32 if detections look wrong", cosine, INT8_MIN_COSINE)
    else:
        log.info("precision int8: image embeddings within cosine %.5f of fp32 (synthetic frames)", cosine)
    return quantized, cosine


def packed_if_equal(tower: torch.nn.Module, batch_size: int) -> torch.nn.Module:
    """The tower with oneDNN-packed linear layers (faster on CPUs), if it computes the same.

    The packed layers use internal torch.ops.mkldnn operators; a torch build without them, or
    one where they misbehave, keeps the plain tower (logged) instead of failing or
    computing something else: both towers embed two random images and must agree.
    """
    if not isinstance(tower, ImageTower):
        return tower
    dtype = next(tower.parameters()).dtype
    if not cpu_can_pack(dtype):
        log.debug("image tower: this CPU does not pack %s linear layers; using plain ones", dtype)
        return tower
    pixels = torch.randn(2, tower.channels, tower.image_size, tower.image_size,
                         generator=torch.Generator().manual_seed(0)).to(dtype)
    try:
        packed = tower.packed_for_cpu(batch_size)
        cosine = lowest_cosine(packed, tower, pixels)
    except (RuntimeError, NotImplementedError, AttributeError) as exc:
        # Informational: nothing for the user to fix, the plain tower computes the same, only slower.
        log.info("image tower: packed linear layers unavailable (%s); using plain ones", short_error(exc))
        return tower
    if not cosine >= TOWER_MIN_COSINE:  # NaN included
        log.warning("image tower: packed linear layers disagree (cosine %.5f); using plain ones", cosine)
        return tower
    return packed


def graphed_if_equal(encode: Callable[[torch.Tensor], torch.Tensor], row_shape: tuple[int, int, int],
                     dtype: torch.dtype, device: torch.device, batch_size: int) -> GraphedEncoder | None:
    """``encode`` replayed as CUDA graphs (cuda_graphs.py), if capturing works and computes the same.

    An operator that cannot be captured on this torch build or GPU must cost speed, not
    correctness or the daemon: then the eager forward is kept, with a warning. Three random
    images go through both, which also checks the padding of a partly filled bucket.
    """
    example = torch.zeros((1, *row_shape), dtype=dtype, device=device)
    try:
        graphed = GraphedEncoder(encode, example, batch_size)
        pixels = torch.randn((min(3, batch_size), *row_shape),
                             generator=torch.Generator().manual_seed(0)).to(device, dtype)
        with torch.inference_mode():
            cosine = torch.nn.functional.cosine_similarity(graphed(pixels), encode(pixels), dim=-1).min().item()
    except (RuntimeError, NotImplementedError) as exc:
        log.warning("CUDA graphs: capture failed on %s (%s); running the model eagerly", device, short_error(exc))
        return None
    if not cosine >= TOWER_MIN_COSINE:  # NaN included
        log.warning("CUDA graphs: replay disagrees with the eager forward (cosine %.5f); running the model eagerly",
                    cosine)
        return None
    log.info("CUDA graphs: captured for batch sizes %s in %.2f s", ",".join(map(str, graphed.buckets)),
             graphed.capture_s)
    return graphed
