"""The parts of a transformers CLIP vision model that ``ImageTower`` reads, as types.

To a type checker a transformers submodule is just an ``nn.Module`` attribute. These Protocols
name the layout ``ImageTower`` relies on (and checks at construction, refusing anything else),
so its code is checked against that layout. transformers' own classes match them structurally.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from torch import nn


class ClipAttention(Protocol):
    num_heads: int
    embed_dim: int
    scale: float  # head_dim ** -0.5
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    out_proj: nn.Linear


class ClipMlp(Protocol):
    fc1: nn.Linear
    fc2: nn.Linear
    activation_fn: nn.Module


class ClipEncoderLayer(Protocol):
    self_attn: ClipAttention
    layer_norm1: nn.LayerNorm
    layer_norm2: nn.LayerNorm
    mlp: ClipMlp


class ClipEncoder(Protocol):
    @property
    def layers(self) -> Sequence[ClipEncoderLayer]: ...  # an nn.ModuleList in transformers


class ClipVisionEmbeddings(Protocol):
    patch_embedding: nn.Conv2d
    class_embedding: nn.Parameter
    position_embedding: nn.Embedding
    image_size: int  # pixels


class ClipVisionModel(Protocol):
    """``CLIPModel.vision_model`` (transformers' ``CLIPVisionTransformer``)."""

    embeddings: ClipVisionEmbeddings
    encoder: ClipEncoder
    pre_layrnorm: nn.LayerNorm  # sic: transformers' spelling
    post_layernorm: nn.LayerNorm
