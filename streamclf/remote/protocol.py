"""What a node and a Triton server agree on: model names, tensors, and the server's ``ServerInfo``.

A server hosts three models under one prefix (``model.triton.model_prefix``, default ``streamclf``):

- ``<prefix>_image``: input ``pixels``, UINT8 (batch, 3, H, W): frames resized and cropped as the
  checkpoint's image processor does (``ServerInfo.preprocess``), RGB, planar, not normalised
  (a quarter of the bytes of fp32; the server normalises). Output ``embeddings``, FP32
  (batch, dim), L2-normalised. Batched by Triton's dynamic batcher across every node.
- ``<prefix>_text``: input ``prompts``, BYTES (batch, 1), UTF-8. Output ``embeddings``, FP32
  (batch, dim), L2-normalised. Called at start, reload and ``labels/set``, never per frame.
- ``<prefix>_info``: input ``protocol``, BYTES (batch, 1): the node's ``PROTOCOL`` version. Output
  ``info``, BYTES (batch, 1): ``ServerInfo`` as JSON. A node asks once per connection and checks
  it against the image model's declared tensors before it sends a frame.

Scoring, decisions and MQTT stay on the node (``streamclf.scoring``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from streamclf.image_spec import PreprocessSpec

PROTOCOL = "streamclf-triton/1"

IMAGE, TEXT, INFO = "image", "text", "info"
PIXELS, PROMPTS, EMBEDDINGS = "pixels", "prompts", "embeddings"
PROTOCOL_INPUT, INFO_OUTPUT = "protocol", "info"


def model_name(prefix: str, which: str) -> str:
    """The Triton model name of ``which`` (IMAGE, TEXT or INFO) under ``prefix``."""
    return f"{prefix}_{which}"


class ProtocolError(Exception):
    """The server's models are not what this node expects; the message names both sides."""


@dataclass(frozen=True)
class ServerInfo:
    """What a node needs to know of the server's model: how to preprocess, how to score, what comes back."""

    model: str  # the checkpoint: a hub id or the server's local directory
    model_type: str  # "clip" or "siglip"
    score_kind: str  # "softmax" or "sigmoid" (``streamclf.scoring``)
    logit_scale: float
    logit_bias: float
    embedding_dim: int
    max_batch_size: int
    preprocess: PreprocessSpec
    protocol: str = PROTOCOL

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["preprocess"] = self.preprocess.to_dict()
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "ServerInfo":
        """Parse the info model's answer; a ProtocolError says what is missing or of another protocol."""
        try:
            d = json.loads(text)
            if d.get("protocol") != PROTOCOL:
                raise ProtocolError(f"the server speaks {d.get('protocol')!r}, this node {PROTOCOL!r}: "
                                    "run the same streamclf version on both")
            return cls(model=str(d["model"]), model_type=str(d["model_type"]), score_kind=str(d["score_kind"]),
                       logit_scale=float(d["logit_scale"]), logit_bias=float(d["logit_bias"]),
                       embedding_dim=int(d["embedding_dim"]), max_batch_size=int(d["max_batch_size"]),
                       preprocess=PreprocessSpec.from_dict(d["preprocess"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ProtocolError(f"the server's {INFO} answer is not a streamclf ServerInfo ({e!r}): {text[:200]!r}") \
                from None
