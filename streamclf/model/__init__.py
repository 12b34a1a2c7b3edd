"""The model: a CLIP checkpoint loaded, checked and run on one device."""

from streamclf.model.classifier import (
    INT8_MIN_COSINE,
    ClipClassifier,
    LabelSet,
    ModelLoadError,
    cpu_has_native_bf16,
    resolve_precision,
)

__all__ = ["INT8_MIN_COSINE", "ClipClassifier", "LabelSet", "ModelLoadError", "cpu_has_native_bf16", "resolve_precision"]
