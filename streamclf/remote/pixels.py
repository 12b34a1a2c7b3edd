"""A node's preprocessing: a camera frame to the uint8 pixels a Triton server's image model reads.

The server's ``<prefix>_image`` model takes (3, crop_h, crop_w) uint8, RGB, planar: the frame resized
and centre-cropped as the checkpoint's image processor does (``PreprocessSpec``), not yet normalised
(``streamclf.remote.protocol``). ``prepare_frame(spec, bgr)`` returns that function of one frame:

- where torch is importable, the local model's own resize and crop
  (``streamclf.model.preprocess.resize_and_crop``), so that a node with torch sends the very pixels
  local mode would feed its model;
- without torch (a node's small install), a numpy port of Pillow's antialiased bicubic resize on
  uint8 (what CLIPImageProcessor runs, and what torch's uint8 kernel reproduces): the same
  filter, the same fixed-point coefficients (22 fractional bits) and the same rounding, horizontal
  pass then vertical pass with the intermediate rounded to uint8, so its output equals
  ``PIL.Image.resize(..., BICUBIC)`` level for level. (Pillow 13 runs the vertical pass first
  when the height shrinks much more than the width, which can move a level; torch's kernel,
  Pillow before 13 and this port always go horizontal first. Camera frames under CLIP's
  shortest-edge resize shrink both edges alike and are resized width first by every version.)

The port is banded: each block of output columns (rows) is one float64 matrix product with the
few input columns (rows) its filter reaches. Products of uint8 levels and 22-bit coefficients sum
to integers far below 2**53, so float64 carries Pillow's integer sums exactly; only the output
columns and rows that survive the centre crop are computed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from streamclf.image_spec import PreprocessSpec

__all__ = ["prepare_frame", "resize_and_crop_numpy"]

_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 bits less 8 for the level, 2 for overshoot
_BICUBIC_SUPPORT = 2.0  # the cubic's half-width, in input pixels at scale 1
_BICUBIC_A = -0.5
_BLOCK = 16  # output columns (rows) per matrix product: wider blocks multiply more zeros


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic with a = -0.5, evaluated in the order Pillow's C evaluates it (bit-equal doubles)."""
    x = np.abs(x)
    near = ((_BICUBIC_A + 2.0) * x - (_BICUBIC_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * _BICUBIC_A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's filter taps for resizing ``in_size`` pixels to ``out_size``: (first, count, weights).

    ``first[o]`` is the first input pixel output ``o`` reads, ``count[o]`` how many, ``weights[o, j]``
    the fixed-point weight of input ``first[o] + j`` (an integer, stored as float64; zero past count).
    """
    scale = float(in_size) / out_size
    filter_scale = max(scale, 1.0)  # downscaling widens the filter: that is the antialiasing
    support = _BICUBIC_SUPPORT * filter_scale
    taps = int(math.ceil(support)) * 2 + 1
    centre = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(centre + support + 0.5), in_size).astype(np.int64)
    count = last - first
    j = np.arange(taps)
    w = _bicubic(((first[:, None] + j[None, :]).astype(np.float64) - centre[:, None] + 0.5) * (1.0 / filter_scale))
    w[j[None, :] >= count[:, None]] = 0.0
    total = np.zeros(out_size)
    for t in range(taps):  # summed tap by tap, as the C loop does: numpy's pairwise sum rounds differently
        total = total + w[:, t]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    one = float(1 << _PRECISION_BITS)
    weights = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one))
    return first, count, weights


@dataclass(frozen=True)
class _Band:
    """One block of outputs [out_lo, out_hi) and the inputs [in_lo, in_hi) it reads, with its weights."""

    out_lo: int
    out_hi: int
    in_lo: int
    in_hi: int
    matrix: np.ndarray  # (in_hi - in_lo, out_hi - out_lo) fixed-point weights, float64


@dataclass(frozen=True)
class _Pass:
    """One direction of the resize, restricted to the outputs [lo, hi) the crop keeps."""

    bands: tuple[_Band, ...]
    in_lo: int  # first input pixel any kept output reads
    in_hi: int


@functools.lru_cache(maxsize=32)  # a node sees a few frame sizes; a 1080p pass is about 200 KiB
def _resize_pass(in_size: int, out_size: int, lo: int, hi: int) -> _Pass:
    """The resize of ``in_size`` pixels to ``out_size``, outputs [lo, hi) only, in bands."""
    first, count, weights = _coefficients(in_size, out_size)
    bands = []
    for b0 in range(lo, hi, _BLOCK):
        b1 = min(b0 + _BLOCK, hi)
        s, e = int(first[b0:b1].min()), int((first[b0:b1] + count[b0:b1]).max())
        m = np.zeros((e - s, b1 - b0))
        for o in range(b0, b1):
            m[first[o] - s : first[o] - s + count[o], o - b0] = weights[o, : count[o]]
        bands.append(_Band(b0, b1, s, e, m))
    return _Pass(tuple(bands), bands[0].in_lo, max(b.in_hi for b in bands))


def _to_uint8(sums: np.ndarray) -> np.ndarray:
    """Pillow's rounding of a fixed-point sum: add half, shift right (floor), clamp to 0..255."""
    half, one = float(1 << (_PRECISION_BITS - 1)), float(1 << _PRECISION_BITS)
    return np.clip(np.floor((sums + half) / one), 0, 255).astype(np.uint8)


def _horizontal(image: np.ndarray, p: _Pass) -> np.ndarray:
    """(H, hi - lo, 3) uint8: the kept output columns of an (H, W, 3) image's horizontal pass."""
    out = np.empty((image.shape[0], p.bands[-1].out_hi - p.bands[0].out_lo, 3), np.uint8)
    for c in range(3):  # one channel at a time: a third of the products of weighting interleaved RGB
        for b in p.bands:
            lo = b.out_lo - p.bands[0].out_lo
            sums = image[:, b.in_lo : b.in_hi, c].astype(np.float64) @ b.matrix
            out[:, lo : lo + b.out_hi - b.out_lo, c] = _to_uint8(sums)
    return out


def _vertical(image: np.ndarray, p: _Pass, first_row: int) -> np.ndarray:
    """(hi - lo, W, 3) uint8: the kept output rows of the vertical pass over ``image``, whose row 0 is
    input row ``first_row``."""
    h, w = image.shape[:2]
    flat = image.reshape(h, w * 3)
    out = np.empty((p.bands[-1].out_hi - p.bands[0].out_lo, w, 3), np.uint8)
    for b in p.bands:
        rows = flat[b.in_lo - first_row : b.in_hi - first_row].astype(np.float64)
        lo = b.out_lo - p.bands[0].out_lo
        out[lo : lo + b.out_hi - b.out_lo] = _to_uint8(b.matrix.T @ rows).reshape(-1, w, 3)
    return out


def _crop_window(size: int, crop: int) -> tuple[int, int, int]:
    """Which resized pixels [lo, hi) a centre crop of ``crop`` keeps, and where the first lands in it.

    As ``streamclf.model.preprocess.centre_crop`` (transformers' rule): zero-pad to at least
    ``crop`` (the odd pixel after), then take the centre, its offset rounded half to even.
    """
    padded = max(size, crop)
    before = (padded - size) // 2
    start = int(round((padded - crop) / 2.0)) - before  # in resized coordinates; negative inside the padding
    lo, hi = max(start, 0), min(start + crop, size)
    return lo, hi, lo - start


def resize_and_crop_numpy(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(crop_h, crop_w, 3) uint8: an (H, W, 3) uint8 image resized with Pillow's bicubic and centre-cropped
    per ``spec``, channels in the image's own order. numpy only."""
    h, w = image.shape[:2]
    nh, nw = spec.resized_size(h, w)
    rows_lo, rows_hi, top = _crop_window(nh, spec.crop_height)
    cols_lo, cols_hi, left = _crop_window(nw, spec.crop_width)
    vertical = _resize_pass(h, nh, rows_lo, rows_hi) if nh != h else None
    # Only the input rows the kept output rows read go through the horizontal pass.
    r0, r1 = (vertical.in_lo, vertical.in_hi) if vertical else (rows_lo, rows_hi)
    if nw != w:
        kept = _horizontal(image[r0:r1], _resize_pass(w, nw, cols_lo, cols_hi))
    else:
        kept = image[r0:r1, cols_lo:cols_hi]
    if vertical:
        kept = _vertical(kept, vertical, r0)
    if kept.shape[:2] == (spec.crop_height, spec.crop_width):
        return np.ascontiguousarray(kept)
    out = np.zeros((spec.crop_height, spec.crop_width, 3), np.uint8)
    out[top : top + kept.shape[0], left : left + kept.shape[1]] = kept
    return out


def _check(frame: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be (height, width, 3) uint8, not {frame.shape} {frame.dtype}")


def _numpy_path(spec: PreprocessSpec, bgr: bool) -> Callable[[np.ndarray], np.ndarray]:
    def prepare(frame: np.ndarray) -> np.ndarray:
        _check(frame)
        crop = resize_and_crop_numpy(frame, spec)
        return np.ascontiguousarray((crop[:, :, ::-1] if bgr else crop).transpose(2, 0, 1))

    return prepare


def _torch_path(spec: PreprocessSpec, bgr: bool) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from streamclf.model import torch_threads
    from streamclf.model.preprocess import resize_and_crop

    def prepare(frame: np.ndarray) -> np.ndarray:
        _check(frame)
        torch_threads.pin(1)  # a capture thread's kernels run inline: no OpenMP pool per thread
        with torch.inference_mode():
            crop = resize_and_crop(frame, spec)
            return (crop.flip(0) if bgr else crop).contiguous().numpy()

    return prepare


def prepare_frame(spec: PreprocessSpec, bgr: bool = True,
                  use_torch: bool | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function of one (H, W, 3) uint8 frame returning what the server's image model reads: (3, crop_h,
    crop_w) uint8, RGB, planar, resized and cropped per ``spec``. Frames are OpenCV's BGR with ``bgr`` (the
    default: what cameras decode to), else RGB.

    ``use_torch``: None takes the local model's own code where torch is importable and the numpy
    port otherwise; True or False forces one (True raises ImportError without torch). Each returned
    array is new, so it may be handed to another thread.
    """
    if use_torch is None:
        try:
            return _torch_path(spec, bgr)
        except ImportError:
            return _numpy_path(spec, bgr)
    return _torch_path(spec, bgr) if use_torch else _numpy_path(spec, bgr)
