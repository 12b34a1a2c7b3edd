"""Zones: named rectangles of a camera's frame, each classified as its own image.

A 224-pixel view of a whole 1080p scene misses the porch; cropping the porch first gives
CLIP the pixels that matter. Every zone of every frame in a batch goes through the same
model call, so zones cost model throughput (one image per zone) but no extra latency.
A camera without zones is classified whole, as the zone ``None``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from streamclf.config import CameraConfig, ZoneConfig
from streamclf.entities import Frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Zone:
    """One named region; ``box`` is (x_min, y_min, x_max, y_max) in 0..1 of the frame, or in pixels."""

    name: str
    box: tuple[float, float, float, float]
    normalized: bool = True

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not (0 <= x0 < x1 and 0 <= y0 < y1) or (self.normalized and max(self.box) > 1):
            raise ValueError(f"zone {self.name}: box must be [x_min, y_min, x_max, y_max], got {self.box}")

    @classmethod
    def from_config(cls, name: str, cfg: ZoneConfig) -> "Zone":
        return cls(name, cfg.box, cfg.coordinates == "normalized")

    def pixel_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) in pixels, clipped to a width x height frame; None if nothing is left.

        Normalised edges are widened outwards to whole pixels (floor the start, ceil the end),
        so a zone never loses a partly covered pixel row or column.
        """
        x0, y0, x1, y1 = self.box
        if self.normalized:
            # round() first so that 0.5 * 320 stays 160 despite binary fractions.
            x0, x1 = math.floor(round(x0 * width, 6)), math.ceil(round(x1 * width, 6))
            y0, y1 = math.floor(round(y0 * height, 6)), math.ceil(round(y1 * height, 6))
        left, top = max(0, int(x0)), max(0, int(y0))
        right, bottom = min(width, int(math.ceil(x1))), min(height, int(math.ceil(y1)))
        if right <= left or bottom <= top:
            return None
        return left, top, right, bottom

    def crop(self, image: np.ndarray) -> np.ndarray | None:
        """The zone's pixels of an (H, W, 3) image, contiguous; None when the zone lies outside it."""
        box = self.pixel_box(image.shape[1], image.shape[0])
        if box is None:
            return None
        left, top, right, bottom = box
        return np.ascontiguousarray(image[top:bottom, left:right])


@dataclass(frozen=True)
class ZonedImage:
    """One image to classify: a frame, the zone it was cut from (None: whole frame), and its pixels."""

    frame: Frame
    zone: str | None
    image: np.ndarray


class ZoneCropper:
    """Expands a batch of frames into one image per zone; cameras without zones stay whole."""

    def __init__(self, cameras: Mapping[str, CameraConfig]):
        self.zones: dict[str, list[Zone]] = {
            name: [Zone.from_config(z, zc) for z, zc in cam.zones.items()] for name, cam in cameras.items()
        }
        self.skipped_outside = 0  # zone crops skipped because the zone lies outside the frame
        self._warned: set[tuple[str, str]] = set()

    def expand(self, batch: Sequence[Frame]) -> list[ZonedImage]:
        out = []
        for frame in batch:
            zones = self.zones.get(frame.camera)
            if not zones:
                out.append(ZonedImage(frame, None, frame.image))
                continue
            for zone in zones:
                crop = zone.crop(frame.image)
                if crop is None:
                    self.skipped_outside += 1
                    if (frame.camera, zone.name) not in self._warned:  # once: it repeats for every frame
                        self._warned.add((frame.camera, zone.name))
                        log.warning(
                            "camera %s: zone %s %s lies outside the %dx%d frame; it is not classified",
                            frame.camera, zone.name, zone.box, frame.image.shape[1], frame.image.shape[0],
                        )
                    continue
                out.append(ZonedImage(frame, zone.name, crop))
        return out
