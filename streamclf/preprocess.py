"""Batched CLIP image preprocessing on uint8 arrays, without PIL.

Matches CLIPImageProcessor for the loaded model: resize so the shortest edge is
``size`` (the long edge scaled and truncated as transformers does), centre crop to
``crop``, scale to 0..1 and normalise by the model's mean and std.

Two implementations, chosen by ``model.preprocess``:

- ``BatchPreprocessor`` (host): each frame is resized on uint8 with torch's antialiased
  bicubic kernel (PIL's filter) and cropped into a reused uint8 staging batch; the batch is
  normalised once in torch on the target device.
- ``DeviceBatchPreprocessor`` (device, the default on CUDA): whole frames go to the device
  as uint8 through reused pinned buffers, and the antialiased bicubic resize (the same
  filter as PIL's), crop and normalisation run there, so the host only copies bytes.

Neither allocates per-frame or per-batch tensors in steady state: staging and output
buffers are kept per batch size (and per frame size for the device path). The returned
batch is therefore only valid until the next call.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bicubic resize of an RGB uint8 (H, W, 3) image: PIL's filter (CLIPImageProcessor's).

    torch has a vectorised uint8 kernel for exactly this filter that reads the HWC array in place
    (as a channels-last view): about 1 ms for a 1280x720 frame on one core, against 7.5 ms for
    OpenCV's INTER_AREA at CLIP's non-integer scale factors. It rounds and clamps like PIL.
    """
    if not image.flags.writeable:  # torch.from_numpy warns about (and never writes) read-only arrays
        image = image.copy()
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    y = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


def resize_and_crop(image: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Resize an RGB uint8 image (H, W, 3) and centre-crop it to (crop_h, crop_w, 3), writing into ``out``."""
    h, w = image.shape[:2]
    nh, nw = resize_shortest_edge(h, w, spec.shortest_edge)
    if (nh, nw) != (h, w):
        image = _resize_uint8(image, nh, nw)
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
        self._outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _buffer(self, n: int) -> tuple[np.ndarray, torch.Tensor]:
        if n not in self._staging:
            shape = (n, self.spec.crop_height, self.spec.crop_width, 3)
            t = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
            self._staging_tensors[n] = t
            self._staging[n] = t.numpy()
        return self._staging[n], self._staging_tensors[n]

    def _output(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(fp32 work buffer, result buffer of ``dtype``), both (n, 3, h, w) on the device, reused."""
        if n not in self._outputs:
            shape = (n, 3, self.spec.crop_height, self.spec.crop_width)
            work = torch.empty(shape, dtype=torch.float32, device=self.device)
            result = work if self.dtype == torch.float32 else torch.empty(shape, dtype=self.dtype, device=self.device)
            self._outputs[n] = (work, result)
        return self._outputs[n]

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return a (N, 3, crop_h, crop_w) tensor of ``dtype`` on the device (valid until the next call)."""
        array, tensor = self._buffer(len(images))
        for i, image in enumerate(images):
            resize_and_crop(image, self.spec, out=array[i])
        work, result = self._output(len(images))
        work.copy_(tensor.to(self.device, non_blocking=True).permute(0, 3, 1, 2))
        work.mul_(self._scale).add_(self._shift)
        if result is not work:
            result.copy_(work)
        return result


class DeviceBatchPreprocessor:
    """Whole uint8 frames to the device; resize, crop and normalise there (torch, any device).

    Frames are grouped by size; each group is copied into a pinned host buffer kept for
    that frame size (so the host-to-device copy is asynchronous and nothing is allocated
    per frame), sent as uint8 (a quarter of the bytes of fp32), and resized with torch's
    antialiased bicubic filter, which reproduces PIL's (CLIPImageProcessor's) filter. The
    result is rounded to whole levels like PIL's uint8 output before normalisation.
    """

    def __init__(self, spec: PreprocessSpec, device: torch.device, dtype: torch.dtype = torch.float32):
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self._pin = device.type == "cuda"
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std
        # (height, width) -> (pinned uint8 (capacity, h, w, 3), its numpy view, event of the last copy out of it)
        self._host: dict[tuple[int, int], tuple[torch.Tensor, np.ndarray, object]] = {}
        self._outputs: dict[int, torch.Tensor] = {}

    def _host_buffer(self, h: int, w: int, n: int) -> tuple[torch.Tensor, np.ndarray]:
        entry = self._host.get((h, w))
        if entry is None or entry[0].shape[0] < n:
            t = torch.empty((n, h, w, 3), dtype=torch.uint8, pin_memory=self._pin)
            entry = (t, t.numpy(), None)
            self._host[(h, w)] = entry
        elif entry[2] is not None:
            entry[2].synchronize()  # the previous asynchronous copy out of this buffer must be done
        return entry[0], entry[1]

    def _output(self, n: int) -> torch.Tensor:
        if n not in self._outputs:
            shape = (n, 3, self.spec.crop_height, self.spec.crop_width)
            self._outputs[n] = torch.empty(shape, dtype=self.dtype, device=self.device)
        return self._outputs[n]

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return a (N, 3, crop_h, crop_w) tensor of ``dtype`` on the device (valid until the next call)."""
        out = self._output(len(images))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape[:2], []).append(i)
        for (h, w), idx in groups.items():
            host, array = self._host_buffer(h, w, len(idx))
            for j, i in enumerate(idx):
                np.copyto(array[j], images[i])
            x = host[: len(idx)].to(self.device, non_blocking=True)
            if self._pin:
                event = torch.cuda.Event()
                event.record()
                self._host[(h, w)] = (host, array, event)
            x = self._resize_crop(x.permute(0, 3, 1, 2), h, w).float()
            x = x.mul_(self._scale).add_(self._shift)
            if len(idx) == len(images):
                out.copy_(x)
            else:
                out[torch.tensor(idx, device=self.device)] = x.to(self.dtype)
        return out

    def _resize_crop(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        nh, nw = resize_shortest_edge(h, w, self.spec.shortest_edge)
        if (nh, nw) != (h, w):
            # The CPU has a fast uint8 kernel for this filter; CUDA's works on floats.
            if x.device.type != "cpu":
                x = x.float()
            x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            if x.is_floating_point():
                x = x.round_().clamp_(0, 255)
        ch, cw = self.spec.crop_height, self.spec.crop_width
        if nh < ch or nw < cw:  # transformers pads with zeros when the crop is larger than the image
            ph, pw = max(nh, ch), max(nw, cw)
            top, left = (ph - nh) // 2, (pw - nw) // 2
            x = torch.nn.functional.pad(x, (left, pw - nw - left, top, ph - nh - top))
            nh, nw = ph, pw
        top = int(round((nh - ch) / 2.0))
        left = int(round((nw - cw) / 2.0))
        return x[:, :, top : top + ch, left : left + cw]
