"""A frame's scores from its embedding and the labels' embeddings: the one rule, for every backend.

No torch here: the local model (``streamclf.model``) and a node whose model runs on a Triton
server (``streamclf.remote``) both hand their cosines to ``scores``.

- CLIP (``softmax``): softmax(logit_scale * cosine) over the camera's labels; they sum to 1, and
  adding a label moves the others.
- SigLIP (``sigmoid``): sigmoid(logit_scale * cosine + logit_bias) for each label on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


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
