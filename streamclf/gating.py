"""Change gating: frames that barely differ from their camera's last classified frame skip the model.

A fixed camera watching an empty driveway produces the same picture for hours; running
CLIP on it again yields the same scores. The gate compares a small colour thumbnail
(``grid`` x ``grid`` cells, each the area mean of its pixels, so sensor noise and
compression artefacts average out) with the thumbnail of the camera's last *classified*
frame, not the previous frame, so slow drift still adds up to a reclassification. A
frame whose fraction of changed cells is below ``threshold`` reuses that frame's scores.
``max_reuse_s`` bounds how long scores are reused, so a missed change cannot last.

The gate runs in the inference thread on each batch: a camera's second frame in a batch
is compared with its first, whose scores are filled in after the model call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence, Union

import cv2
import numpy as np

from streamclf.config import ChangeGateConfig
from streamclf.entities import Frame

Scores = Mapping[str, float]


@dataclass(frozen=True)
class _Reference:
    """A camera's last classified frame: thumbnail, frame time (s) and where its scores are."""

    thumbnail: np.ndarray
    frame_time: float
    source: Union[int, Scores]  # index into the current batch, or scores already known


@dataclass(frozen=True)
class GatePlan:
    """For each frame of a batch: None (run the model), an index of a frame in the batch
    whose scores it reuses, or the reused scores themselves."""

    decisions: tuple[Union[None, int, Scores], ...]
    references: Mapping[Hashable, _Reference]

    @property
    def to_run(self) -> list[int]:
        return [i for i, d in enumerate(self.decisions) if d is None]


class ChangeGate:
    """Decides per frame whether the model must run; remembers each camera's last classified frame."""

    def __init__(self, cfg: ChangeGateConfig):
        self.cfg = cfg
        self._last: dict[Hashable, _Reference] = {}  # by camera, or (camera, zone)
        self.skipped: Counter[str] = Counter()  # frames that reused scores, per camera

    def thumbnail(self, image: np.ndarray) -> np.ndarray:
        """(grid, grid, 3) int16 area-mean thumbnail of a uint8 image (any channel order)."""
        g = self.cfg.grid
        return cv2.resize(image, (g, g), interpolation=cv2.INTER_AREA).astype(np.int16)

    def changed_fraction(self, a: np.ndarray, b: np.ndarray) -> float:
        """Fraction (0..1) of thumbnail cells where any channel differs by more than ``cell_delta`` levels."""
        return float((np.abs(a - b).max(axis=2) > self.cfg.cell_delta).mean())

    def plan(self, batch: Sequence[Frame], keys: Sequence[Hashable] | None = None) -> GatePlan:
        """Decide, in batch order, which frames run the model and which reuse scores.

        ``keys`` name what each frame is compared with (default: its camera; the pipeline passes
        (camera, zone) so each zone is compared with the same zone's last crop)."""
        keys = [f.camera for f in batch] if keys is None else keys
        refs: dict[Hashable, _Reference] = {}
        decisions: list[Union[None, int, Scores]] = []
        for i, (frame, key) in enumerate(zip(batch, keys, strict=True)):
            thumb = self.thumbnail(frame.image)
            ref = refs.get(key) or self._last.get(key)
            if ref is not None and self._unchanged(ref, thumb, frame.frame_time):
                decisions.append(ref.source)
                self.skipped[frame.camera] += 1
            else:
                decisions.append(None)
                refs[key] = _Reference(thumb, frame.frame_time, i)
        return GatePlan(tuple(decisions), refs)

    def _unchanged(self, ref: _Reference, thumb: np.ndarray, frame_time: float) -> bool:
        age = frame_time - ref.frame_time
        if not 0 <= age <= self.cfg.max_reuse_s:  # too old, or time went backwards (a new stream)
            return False
        return self.changed_fraction(ref.thumbnail, thumb) < self.cfg.threshold

    def resolve(self, plan: GatePlan, scores: Sequence[Scores | None]) -> list[Scores]:
        """Fill in the reused scores (``scores`` holds the model's result at each run index)
        and remember each camera's newest classified frame."""
        out: list[Scores] = []
        for decision, own in zip(plan.decisions, scores, strict=True):
            found = own if decision is None else scores[decision] if isinstance(decision, int) else decision
            if found is None:
                raise ValueError("no scores for a frame the gate sent to the model")
            out.append(found)
        for key, ref in plan.references.items():
            # plan() records only this batch's frames here, by index; _last then holds their scores.
            assert isinstance(ref.source, int), "a plan's reference is an index into its batch"
            self._last[key] = _Reference(ref.thumbnail, ref.frame_time, out[ref.source])
        return out

    def forget(self, camera: str | None = None) -> None:
        """Drop remembered frames (all cameras, or one): call when labels change, since the scores would be stale."""
        if camera is None:
            self._last.clear()
        else:
            for key in [k for k in self._last if k == camera or (isinstance(k, tuple) and k[0] == camera)]:
                del self._last[key]

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())
