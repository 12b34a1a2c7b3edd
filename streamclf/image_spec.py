"""What a checkpoint's image processor does to a frame, as plain values: no torch here.

The spec is read from the checkpoint by ``streamclf.model.loading``; the local model's
preprocessing (``streamclf.model.preprocess``) and a Triton node's (``streamclf.remote.pixels``)
both follow it, and a Triton server hands it to its nodes (``streamclf.remote.protocol``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PreprocessSpec:
    """The parts of a model's preprocessor_config.json that matter. Sizes in pixels.

    ``square``: resize the whole frame to (crop_height, crop_width), no crop (SigLIP);
    otherwise resize the shortest edge to ``shortest_edge`` and centre-crop (CLIP).
    """

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    square: bool = False

    @classmethod
    def from_processor_dict(cls, d: dict) -> "PreprocessSpec":
        """The spec of an image processor's settings (transformers' image-processor dict)."""
        size = d.get("size", {"shortest_edge": 224})
        shortest = size.get("shortest_edge") if isinstance(size, dict) else int(size)
        mean, std = tuple(d.get("image_mean", cls.mean)), tuple(d.get("image_std", cls.std))
        if shortest is None and not d.get("do_center_crop", False):
            # {"height": h, "width": w} and no crop: SiglipImageProcessor's resize to that size.
            h, w = int(size["height"]), int(size["width"])
            return cls(shortest_edge=min(h, w), crop_height=h, crop_width=w, mean=mean, std=std, square=True)
        if shortest is None:  # {"height": h, "width": w} followed by a centre crop
            shortest = min(size["height"], size["width"])
        crop = d.get("crop_size", {"height": shortest, "width": shortest})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(shortest_edge=int(shortest), crop_height=int(crop["height"]), crop_width=int(crop["width"]),
                   mean=mean, std=std)

    @classmethod
    def family_default(cls, model_type: str, image_size: int) -> "PreprocessSpec":
        """What the family's image processor does by default, at the vision tower's input size (pixels)."""
        if model_type == "siglip":
            return cls(image_size, image_size, image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), square=True)
        return cls(image_size, image_size, image_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        """The inverse of ``to_dict`` (lists for the tuples, as JSON has them)."""
        mean, std = (float(v) for v in d["mean"]), (float(v) for v in d["std"])
        return cls(shortest_edge=int(d["shortest_edge"]), crop_height=int(d["crop_height"]),
                   crop_width=int(d["crop_width"]), mean=(next(mean), next(mean), next(mean)),
                   std=(next(std), next(std), next(std)), square=bool(d["square"]))

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) in pixels a (height, width) frame is resized to, before any crop."""
        if self.square:
            return self.crop_height, self.crop_width
        return resize_shortest_edge(height, width, self.shortest_edge)


def resize_shortest_edge(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Output (height, width) for resizing so the shortest edge is ``shortest`` pixels, as transformers does."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest, int(shortest * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)
