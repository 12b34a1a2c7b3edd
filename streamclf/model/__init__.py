"""The model: a CLIP or SigLIP checkpoint loaded, checked and run on one device.

- ``loading``: finding and loading a checkpoint (hub id or local directory), with messages that say what to do.
- ``device``: ``model.device`` and ``model.precision`` resolved for this machine.
- ``checks``: each faster path (our tower, packed layers, int8, CUDA graphs) compared with a reference at load.
- ``classifier``: ``ClipClassifier`` (either family) and ``LabelSet``: label embeddings (prompts and
  example images) and batched frame scoring (softmax for CLIP, per-label sigmoid for SigLIP).
- ``preprocess``: the checkpoint's image preprocessing on uint8 batches, on the host or the device.
- ``image_tower``: CLIP's image tower computing only the pooled embedding.
- ``cuda_graphs``: the image tower replayed as CUDA graphs.
- ``torch_threads``: one torch worker pool per process, owned by the inference thread.
"""

from streamclf.model.checks import INT8_MIN_COSINE, TOWER_MIN_COSINE
from streamclf.model.classifier import ClipClassifier, LabelSet
from streamclf.model.device import cpu_has_native_bf16, resolve_device, resolve_precision
from streamclf.model.loading import ModelLoadError, load_pretrained
from streamclf.model.preprocess import PreprocessSpec

__all__ = [
    "INT8_MIN_COSINE",
    "TOWER_MIN_COSINE",
    "ClipClassifier",
    "LabelSet",
    "ModelLoadError",
    "PreprocessSpec",
    "cpu_has_native_bf16",
    "load_pretrained",
    "resolve_device",
    "resolve_precision",
]
