"""Where the model runs: this process (``model.backend: local``) or a Triton server (``triton``).

Both backends give the pipeline the same classifier: ``prepare_image`` (per frame, on capture
threads), ``encode_labels``, ``embed_images`` and ``score``. A remote one can be away; its calls
then raise ``InferenceUnavailable`` at once, and the pipeline drops the batch's frames with
their own reason (``DropReason.INFERENCE_UNAVAILABLE``) instead of stopping. No torch here:
a node on Triton imports nothing of torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from streamclf.config import LabelExamples, ModelConfig
from streamclf.scoring import LabelSet


class ModelLoadError(Exception):
    """The model could not be found, loaded or reached; the message says where we looked and what to do."""


class InferenceUnavailable(Exception):
    """The model cannot run now (its server is away or too slow); the message says why. Retried later."""


@dataclass(frozen=True)
class BackendStatus:
    """Where the model runs and whether it can be reached: for status, ``/healthz``, metrics and stats."""

    kind: str  # "local" or "triton"
    address: str  # the server's url; "" for local
    connected: bool  # always True for local
    last_error: str  # why the server is not connected, or why the last request failed; "" when fine
    reconnects: int = 0  # connections made after the first
    failed_requests: int = 0  # requests that failed (unreachable, timed out, refused)


class Classifier(Protocol):
    """What the pipeline needs of a model, local or remote."""

    device: Any
    precision: str

    @property
    def prepare_image(self) -> Callable[[np.ndarray], Any] | None: ...

    def reserve_model_thread(self) -> None: ...

    def become_model_thread(self) -> None: ...

    def encode_labels(self, prompts: Mapping[str, Sequence[str]],
                      examples: Mapping[str, LabelExamples] | None = None) -> LabelSet: ...

    def embed_images(self, images: Sequence[np.ndarray], bgr: bool = False,
                     prepared: Sequence[Any] | None = None) -> Any: ...

    def score(self, embeddings: Any, labels: LabelSet, subsets: Sequence[Sequence[str]]) -> list[dict[str, float]]: ...

    def backend_status(self) -> BackendStatus: ...


def load_classifier(cfg: ModelConfig) -> Classifier:
    """The model as ``cfg`` says: loaded here, or a client of a Triton server. Raises ModelLoadError."""
    if cfg.backend == "triton":
        try:
            from streamclf.remote.client import TritonClassifier
        except ImportError as exc:
            raise ModelLoadError(f"model.backend is triton, but the Triton client is not installed ({exc}): "
                                 "pip install 'streamclf[triton]'") from None
        return TritonClassifier(cfg)
    try:
        from streamclf.model import ClipClassifier
    except ImportError as exc:
        raise ModelLoadError(f"model.backend is local, but torch or transformers is not installed ({exc}): "
                             "pip install 'streamclf[local]', or set model.backend: triton to use a Triton "
                             "server") from None
    return ClipClassifier(cfg)
