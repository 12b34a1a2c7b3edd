"""Batched CLIP image preprocessing on uint8 arrays, without PIL.

Matches CLIPImageProcessor for the loaded model: resize so the shortest edge is
``size`` (the long edge scaled and truncated as transformers does), centre crop to
``crop``, scale to 0..1 and normalise by the model's mean and std. The resize runs in
OpenCV on uint8 (INTER_AREA when shrinking, which antialiases like PIL's bicubic
filter does, INTER_CUBIC when enlarging); normalisation runs once per batch in torch
on the target device, so a GPU receives uint8 and does the float work itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class PreprocessSpec:
    """The parts of a model's preprocessor_config.json that matter. Sizes in pixels."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_processor_dict(cls, d: dict) -> "PreprocessSpec":
        size = d.get("size", {"shortest_edge": 224})
        shortest = size.get("shortest_edge") if isinstance(size, dict) else int(size)
        if shortest is None:  # {"height": h, "width": w} style: square models
            shortest = min(size["height"], size["width"])
        crop = d.get("crop_size", {"height": shortest, "width": shortest})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(
            shortest_edge=int(shortest),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            mean=tuple(d.get("image_mean", cls.mean)),
            std=tuple(d.get("image_std", cls.std)),
        )


def resize_shortest_edge(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Output (height, width) for resizing so the shortest edge is ``shortest`` pixels, as transformers does."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize_and_crop(image: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Resize an RGB uint8 image (H, W, 3) and centre-crop it to (crop_h, crop_w, 3), writing into ``out``."""
    h, w = image.shape[:2]
    nh, nw = resize_shortest_edge(h, w, spec.shortest_edge)
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if nh < h else cv2.INTER_CUBIC
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    ch, cw = spec.crop_height, spec.crop_width
    if nh < ch or nw < cw:  # transformers pads with zeros when the crop is larger than the image
        padded = np.zeros((max(nh, ch), max(nw, cw), 3), np.uint8)
        top, left = (padded.shape[0] - nh) // 2, (padded.shape[1] - nw) // 2
        padded[top : top + nh, left : left + nw] = image
        image, nh, nw = padded, padded.shape[0], padded.shape[1]
    top = int(round((nh - ch) / 2.0))
    left = int(round((nw - cw) / 2.0))
    crop = image[top : top + ch, left : left + cw]
    if out is None:
        return np.ascontiguousarray(crop)
    out[...] = crop
    return out


class BatchPreprocessor:
    """Turns a list of uint8 RGB images into one normalised float batch on ``device``.

    The uint8 staging buffer is allocated once per batch size and reused (pinned on CUDA
    so the copy can be asynchronous), so steady-state preprocessing allocates no batch.
    """

    def __init__(self, spec: PreprocessSpec, device: torch.device, dtype: torch.dtype = torch.float32):
        self.spec = spec
        self.device = device
        self.dtype = dtype
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # x/255 then (x - mean)/std folded into one multiply-add.
        self._scale = (1.0 / (255.0 * std)).to(device)
        self._shift = (-mean / std).to(device)
        self._staging: dict[int, np.ndarray] = {}
        self._staging_tensors: dict[int, torch.Tensor] = {}

    def _buffer(self, n: int) -> tuple[np.ndarray, torch.Tensor]:
        if n not in self._staging:
            shape = (n, self.spec.crop_height, self.spec.crop_width, 3)
            t = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
            self._staging_tensors[n] = t
            self._staging[n] = t.numpy()
        return self._staging[n], self._staging_tensors[n]

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return a (N, 3, crop_h, crop_w) tensor of ``dtype`` on the device."""
        array, tensor = self._buffer(len(images))
        for i, image in enumerate(images):
            resize_and_crop(image, self.spec, out=array[i])
        x = tensor.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = x * self._scale + self._shift
        return x.to(self.dtype).contiguous()
