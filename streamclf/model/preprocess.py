"""Batched image preprocessing on uint8 arrays, without PIL, as the checkpoint's image processor does it.

Two resizes, as the checkpoint's settings say (``PreprocessSpec.from_processor_dict``):

- CLIP (CLIPImageProcessor): resize so the shortest edge is ``size`` (the long edge scaled
  and truncated as transformers does), then centre crop to ``crop_size``;
- SigLIP (SiglipImageProcessor): resize to the square ``size`` ({"height", "width"}), aspect
  ratio not kept, no crop.

Then scale to 0..1 and normalise by the checkpoint's mean and std (CLIP's own statistics,
SigLIP's 0.5/0.5).

Two implementations, chosen by ``model.preprocess``:

- ``BatchPreprocessor`` (host): each frame is resized on uint8 with torch's antialiased
  bicubic kernel (PIL's filter) and cropped into a reused planar uint8 staging batch; the
  batch is normalised once in torch on the target device.
- ``DeviceBatchPreprocessor`` (device, the default on CUDA): whole frames go to the device
  as uint8 through reused pinned buffers, and the antialiased bicubic resize (the same
  filter as PIL's), crop and normalisation run there, so the host only copies bytes.

Neither allocates per-frame or per-batch tensors in steady state: staging and output
buffers are kept per batch size (and per frame size for the device path). The returned
batch is therefore only valid until the next call. (The host path's ``prepare``, which a
capture thread may call ahead of the batch, returns a new crop per frame: it is handed
between threads, so it cannot be a shared buffer.)

Frames arrive in OpenCV's BGR order (``bgr=True``; what the cameras decode) or in RGB.
Nothing converts them at full size: the channels are read in RGB order only when the
224x224 crops are normalised, and frames are never transposed from HWC to planar and back.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from streamclf.image_spec import PreprocessSpec, resize_shortest_edge
from streamclf.model import torch_threads

__all__ = ["BatchPreprocessor", "DeviceBatchPreprocessor", "Normaliser", "PreprocessSpec", "centre_crop",
           "resize_and_crop", "resize_shortest_edge"]


def _resize_planar(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(3, height, width) uint8 tensor: an (H, W, 3) uint8 image resized with PIL's filter (CLIPImageProcessor's).

    torch has a vectorised uint8 kernel for antialiased bicubic that reads the HWC array in
    place (as a channels-last view), rounds and clamps like PIL and writes planar output, several
    times faster than OpenCV's INTER_AREA at CLIP's non-integer scale factors. Planar is what the
    model reads, so the result is never transposed back to HWC.
    """
    if not image.flags.writeable or min(image.strides) < 0:
        image = image.copy()  # torch.from_numpy refuses negative strides and warns about read-only arrays
    x = torch.from_numpy(image).permute(2, 0, 1)
    if (height, width) == tuple(x.shape[1:]):
        return x
    return torch.nn.functional.interpolate(x.unsqueeze(0), size=(height, width), mode="bicubic", antialias=True,
                                           align_corners=False)[0]


def centre_crop(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """The centre (crop_h, crop_w) of a (..., H, W) tensor, zero-padded first where it is smaller.

    As transformers does it.
    """
    nh, nw = x.shape[-2:]
    ch, cw = spec.crop_height, spec.crop_width
    if nh < ch or nw < cw:
        ph, pw = max(nh, ch), max(nw, cw)
        top, left = (ph - nh) // 2, (pw - nw) // 2
        x = torch.nn.functional.pad(x, (left, pw - nw - left, top, ph - nh - top))
        nh, nw = ph, pw
    top = int(round((nh - ch) / 2.0))
    left = int(round((nw - cw) / 2.0))
    return x[..., top : top + ch, left : left + cw]


def resize_and_crop(image: np.ndarray, spec: PreprocessSpec, out: torch.Tensor | None = None) -> torch.Tensor:
    """Resize an (H, W, 3) uint8 image and centre-crop it to a planar (3, crop_h, crop_w) uint8 tensor.

    Writes into ``out`` when given. Channels stay in the image's order (RGB stays RGB, BGR stays BGR).
    """
    h, w = image.shape[:2]
    crop = centre_crop(_resize_planar(image, *spec.resized_size(h, w)), spec)
    return crop.contiguous() if out is None else out.copy_(crop)


class Normaliser:
    """uint8 planar batch -> (x / 255 - mean) / std in the model's dtype, with the channel order fixed.

    One pass per channel (the multiply-add computed in fp32, rounded once to ``dtype``), reading
    each output channel from its place in the input: BGR frames (OpenCV's order, as decoded)
    are never converted to RGB at full size, only their 224x224 crops are read in RGB order here.
    """

    def __init__(self, spec: PreprocessSpec, device: torch.device):
        # x/255 then (x - mean)/std folded into one multiply-add per channel.
        self.scale = [1.0 / (255.0 * s) for s in spec.std]
        self.shift = [torch.tensor(-m / s, dtype=torch.float32, device=device)
                      for m, s in zip(spec.mean, spec.std, strict=True)]

    def __call__(self, pixels: torch.Tensor, out: torch.Tensor, bgr: bool) -> torch.Tensor:
        for c in range(3):
            source = pixels[:, 2 - c] if bgr else pixels[:, c]
            torch.add(self.shift[c], source, alpha=self.scale[c], out=out[:, c])
        return out


class BatchPreprocessor:
    """Turns a list of uint8 images (RGB, or BGR with ``bgr=True``) into one normalised batch on ``device``.

    Each frame is resized and cropped straight into a planar uint8 staging batch, allocated
    once per batch size and reused (pinned on CUDA so the copy can be asynchronous); the
    batch is then normalised in one pass per channel on the device. Steady state allocates
    no batch.
    """

    def __init__(self, spec: PreprocessSpec, device: torch.device, dtype: torch.dtype = torch.float32):
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self._normalise = Normaliser(spec, device)
        self._staging: dict[int, torch.Tensor] = {}
        self._outputs: dict[int, torch.Tensor] = {}

    def _buffer(self, n: int) -> torch.Tensor:
        if n not in self._staging:
            shape = (n, 3, self.spec.crop_height, self.spec.crop_width)
            self._staging[n] = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        return self._staging[n]

    def _output(self, n: int) -> torch.Tensor:
        if n not in self._outputs:
            shape = (n, 3, self.spec.crop_height, self.spec.crop_width)
            self._outputs[n] = torch.empty(shape, dtype=self.dtype, device=self.device)
        return self._outputs[n]

    @torch.inference_mode()
    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The resize and crop of one image, (3, crop_h, crop_w) uint8 in its own channel order.

        Callable from any thread: the pipeline's idle-priority capture threads do this part
        ahead of the batch, and ``__call__`` then only copies it into the staging batch. It runs
        with one torch thread, like every thread but the model's (streamclf/model/torch_threads.py).
        """
        torch_threads.pin(1)
        return resize_and_crop(image, self.spec)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray], bgr: bool = False,
                 prepared: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Return a (N, 3, crop_h, crop_w) RGB tensor of ``dtype`` on the device (valid until the next call).

        ``prepared[i]``, where given, is ``prepare(images[i])`` done earlier and is used as is.
        """
        staging = self._buffer(len(images))
        for i, image in enumerate(images):
            ready = prepared[i] if prepared is not None else None
            if ready is not None:
                staging[i].copy_(ready)
            else:
                resize_and_crop(image, self.spec, out=staging[i])
        pixels = staging.to(self.device, non_blocking=True)
        return self._normalise(pixels, self._output(len(images)), bgr)


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
        self._normalise = Normaliser(spec, device)
        # (height, width) -> (pinned uint8 (capacity, h, w, 3), its numpy view, event of the last copy out of it)
        self._host: dict[tuple[int, int], tuple[torch.Tensor, np.ndarray, torch.cuda.Event | None]] = {}
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

    prepare = None  # whole frames go to the device; nothing can be done ahead on the host

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray], bgr: bool = False, prepared=None) -> torch.Tensor:
        """(N, 3, crop_h, crop_w) RGB tensor of ``dtype`` on the device for RGB (or ``bgr``) uint8 images,
        valid until the next call. ``prepared`` is ignored (see ``prepare``)."""
        out = self._output(len(images))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((image.shape[0], image.shape[1]), []).append(i)
        for (h, w), idx in groups.items():
            host, array = self._host_buffer(h, w, len(idx))
            for j, i in enumerate(idx):
                np.copyto(array[j], images[i])
            x = host[: len(idx)].to(self.device, non_blocking=True)
            if self._pin:
                event = torch.cuda.Event()
                event.record()
                self._host[(h, w)] = (host, array, event)
            x = self._resize_crop(x.permute(0, 3, 1, 2), h, w)
            if len(idx) == len(images):
                self._normalise(x, out, bgr)
            else:
                out[torch.tensor(idx, device=self.device)] = self._normalise(x, torch.empty_like(out[: len(idx)]), bgr)
        return out

    def _resize_crop(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        nh, nw = self.spec.resized_size(h, w)
        if (nh, nw) != (h, w):
            # The CPU has a fast uint8 kernel for this filter; CUDA's works on floats.
            if x.device.type != "cpu":
                x = x.float()
            x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            if x.is_floating_point():
                x = x.round_().clamp_(0, 255)
        return centre_crop(x, self.spec)
