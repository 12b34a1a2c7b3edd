"""A frame's scores from its embedding and the labels' embeddings: the one rule, for every backend.

No torch here: the local model (``streamclf.model``) and a node whose model runs on a Triton
server (``streamclf.remote``) both hand their cosines to ``scores``.

- CLIP (``softmax``): softmax(logit_scale * cosine) over the camera's labels; they sum to 1, and
  adding a label moves the others.
- SigLIP (``sigmoid``): sigmoid(logit_scale * cosine + logit_bias) for each label on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from streamclf.config import LabelExamples


@dataclass(frozen=True)
class LabelSet:
    """Embeddings of a set of labels, (n_labels, dim), L2-normalised.

    ``embeddings`` is whatever the backend multiplies with: a torch tensor on the local model's
    device, a numpy array on a Triton node.
    """

    names: tuple[str, ...]
    embeddings: Any

    def index(self, names: Sequence[str]) -> list[int]:
        return [self.names.index(n) for n in names]


def label_embeddings(prompts: Mapping[str, Sequence[str]], text: np.ndarray, examples: Mapping[str, LabelExamples],
                     example_mean: Callable[[Sequence], np.ndarray]) -> np.ndarray:
    """Each label's embedding, (n_labels, dim) fp32: the one rule, whichever backend embedded the parts.

    normalise((1 - w) * mean of the label's normalised prompt embeddings + w * mean of its example
    images' normalised embeddings), w the examples' weight (0..1; 0 without examples). ``text`` holds
    the prompts' embeddings in ``prompts``' order; ``example_mean(paths)`` embeds a label's images.
    """
    rows, start = [], 0
    for name, label_prompts in prompts.items():
        k = len(label_prompts)
        row = text[start : start + k].astype(np.float32).mean(0)
        start += k
        if name in examples and examples[name].paths:
            w = examples[name].weight
            row = (1 - w) * row + w * example_mean(examples[name].paths)
        rows.append(row / max(float(np.linalg.norm(row)), 1e-12))
    return np.stack(rows).astype(np.float32)


def example_mean(paths: Sequence, batch_size: int, embed: Callable[[list[np.ndarray]], np.ndarray]) -> np.ndarray:
    """Mean of the normalised embeddings of the image files ``paths``, read and embedded ``batch_size`` at a time
    by ``embed`` (BGR images -> (n, dim)). Raises ValueError naming an image that cannot be read."""
    import cv2

    total = None
    for i in range(0, len(paths), batch_size):
        images = []
        for path in paths[i : i + batch_size]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"example image {path} cannot be read or decoded")
            images.append(image)
        emb = np.asarray(embed(images), dtype=np.float32).sum(0)
        total = emb if total is None else total + emb
    assert total is not None, "a label's examples have at least one image (config validation)"
    return total / len(paths)


@dataclass(frozen=True)
class ScoreRule:
    """How cosines become scores: the family's kind and the checkpoint's learned scale and bias."""

    kind: str  # "softmax" (CLIP) or "sigmoid" (SigLIP)
    logit_scale: float
    logit_bias: float = 0.0

    def scores(self, cosines: np.ndarray, labels: LabelSet, subsets: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Scores (0..1) of each row of ``cosines`` (frames x labels.names) for its own subset of label names.

        For SigLIP the subset changes nothing but which labels are scored.
        """
        results = []
        for row, names in zip(np.asarray(cosines, dtype=np.float32), subsets, strict=True):
            logits = np.float32(self.logit_scale) * row[labels.index(names)]
            if self.kind == "sigmoid":
                probs = 1.0 / (1.0 + np.exp(-(logits + np.float32(self.logit_bias))))
            else:
                e = np.exp(logits - logits.max())
                probs = e / e.sum()
            results.append(dict(zip(names, probs.tolist(), strict=True)))
        return results
