"""CLIP's image tower, computing only what the daemon reads: the projected CLS embedding.

transformers' ``CLIPVisionModel`` returns every token's hidden state; a classifier reads
one row of it. This module runs the same weights through the same operations, with
rearrangements that change no result beyond float rounding:

- The last encoder layer computes keys and values for every token but the query,
  attention output and MLP for the CLS token only: nothing else of that layer reaches
  ``pooler_output``. For ViT-B/32 (50 tokens, 12 layers) that is 7% of the FLOPs.
- The query, key and value projections of a layer are one matrix multiply (the three
  weights stacked), with the attention scale folded into the query weights.
- The patch embedding (a convolution whose stride equals its kernel) is a linear layer
  over the flattened patches.
- On the CPU, ``packed_for_cpu`` swaps every linear layer for a ``PackedLinear``: weights
  laid out once for oneDNN, quick_gelu and the residual additions fused into the multiplies.

With these, the matrix multiplies are nearly all of the tower's time.

Layer norms, MLP and output-projection modules are shared with the transformers model; the
stacked projections are new tensors. Anything that is not the standard CLIP vision layout is
refused with ``ValueError`` at construction, so a surprising checkpoint falls back to
transformers' own forward (``ClipClassifier`` does that) instead of computing something else.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import QuickGELUActivation

from streamclf.model.hf_layout import ClipEncoderLayer, ClipVisionModel

# quick_gelu(z) = z * sigmoid(1.702 z) = swish(1.702 z) / 1.702, and oneDNN fuses swish into a matmul.
_QUICK_GELU_ALPHA = 1.702


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _linear_add(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + layer(x); a packed layer adds inside its matrix multiply (one pass less over the output)."""
    if isinstance(layer, PackedLinear):
        return layer.add(x, residual)
    return residual + layer(x)


def cpu_can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs linear weights of ``dtype`` on this CPU.

    fp32 packs on any x86 CPU oneDNN supports; bf16 packing needs AVX-512 (BW/VL/DQ) or
    AVX-NE-CONVERT, and an AVX2-only CPU refuses it. bf16 on such a CPU is slow anyway:
    precision auto picks fp32 there.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        try:
            # torch has no public check for oneDNN's bf16 kernels; the private op is the one answer.
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # noqa: SLF001
        except (AttributeError, RuntimeError):
            return False
    return dtype == torch.float32


class PackedLinear(nn.Module):
    """A linear layer whose weight is pre-packed in oneDNN's blocked layout, for the CPU.

    An ``nn.Linear`` in eager mode has oneDNN re-lay its weight on every call, a noticeable part
    of each matrix multiply at the small batches the daemon runs (same bits out). Packing once
    at load time is what torch.compile's freezing does, without a compiler or a warm-up. ``activation`` is a
    oneDNN post-op applied inside the multiply ("none" or "swish").
    """

    def __init__(self, linear: nn.Linear, rows: int, activation: str = "none"):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.activation = activation
        # oneDNN's prepacked linear ops are private in torch (torch.compile's freezing uses them); there is
        # no public way to pack a weight once. A torch without them fails the load-time check instead.
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)  # noqa: SLF001
        self.register_buffer("packed_weight", packed, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(  # noqa: SLF001 (see __init__)
            x, self.packed_weight, self.bias, self.activation, [], "")

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(  # noqa: SLF001 (see __init__)
            x, residual, self.packed_weight, self.bias, "add")


class _Layer(nn.Module):
    """One pre-norm encoder layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, hf_layer: ClipEncoderLayer, cls_only: bool):
        super().__init__()
        attn = hf_layer.self_attn
        self.heads = attn.num_heads
        self.width = attn.embed_dim
        self.cls_only = cls_only
        self.layer_norm1 = hf_layer.layer_norm1
        self.layer_norm2 = hf_layer.layer_norm2
        self.out_proj: nn.Linear | PackedLinear = attn.out_proj
        self.fc1: nn.Linear | PackedLinear = hf_layer.mlp.fc1
        self.activation = hf_layer.mlp.activation_fn
        self.fc2: nn.Linear | PackedLinear = hf_layer.mlp.fc2
        q_w, q_b = attn.q_proj.weight * attn.scale, attn.q_proj.bias * attn.scale
        kv_w = torch.cat([attn.k_proj.weight, attn.v_proj.weight])
        kv_b = torch.cat([attn.k_proj.bias, attn.v_proj.bias])
        if cls_only:  # the query of one token, keys and values of all
            self.q_proj: nn.Linear | PackedLinear = _linear(q_w, q_b)
            self.kv_proj: nn.Linear | PackedLinear = _linear(kv_w, kv_b)
        else:
            self.qkv_proj: nn.Linear | PackedLinear = _linear(torch.cat([q_w, kv_w]), torch.cat([q_b, kv_b]))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm1(x)
        if self.cls_only:
            x = x[:, :1]
            q = self.q_proj(h[:, :1])
            k, v = self.kv_proj(h).split(self.width, dim=-1)
        else:
            q, k, v = self.qkv_proj(h).split(self.width, dim=-1)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), scale=1.0)
        a = a.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.width)
        x = _linear_add(self.out_proj, a, x)
        return _linear_add(self.fc2, self.activation(self.fc1(self.layer_norm2(x))), x)


class ImageTower(nn.Module):
    """(N, 3, S, S) pixel batch -> (N, projection_dim) unnormalised image embeddings.

    Built from a transformers ``CLIPVisionModel`` (``CLIPModel.vision_model``) and
    ``CLIPModel.visual_projection``; equal to ``visual_projection(vision_model(x).pooler_output)``
    up to float rounding. Input must be the model's own image size (no position interpolation).
    """

    def __init__(self, vision_model: ClipVisionModel, visual_projection: nn.Linear):
        super().__init__()
        emb = vision_model.embeddings
        conv = emb.patch_embedding
        if conv.bias is not None or conv.stride != conv.kernel_size or conv.padding not in ((0, 0), 0):
            raise ValueError("patch embedding is not a plain non-overlapping convolution")
        hf_layers = list(vision_model.encoder.layers)
        if not hf_layers:
            raise ValueError("vision encoder has no layers")
        for layer in hf_layers:
            attn = layer.self_attn
            if any(getattr(getattr(attn, p, None), "bias", None) is None for p in ("q_proj", "k_proj", "v_proj")):
                raise ValueError("attention projections without biases are not CLIP's layout")
        self.patch = conv.kernel_size[0]
        self.image_size = emb.image_size
        self.channels = conv.in_channels
        # The convolution as a linear layer over flattened (channels, patch, patch) pixels.
        self.patch_embedding: nn.Linear | PackedLinear = _linear(
            conv.weight.detach().reshape(conv.out_channels, -1), None)
        self.class_embedding = emb.class_embedding
        self.position_embedding = emb.position_embedding
        self.pre_layernorm = vision_model.pre_layrnorm
        last = len(hf_layers) - 1
        self.layers = nn.ModuleList(_Layer(layer, cls_only=(i == last)) for i, layer in enumerate(hf_layers))
        self.post_layernorm = vision_model.post_layernorm
        self.projection: nn.Linear | PackedLinear = visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        n, c, h, w = pixel_values.shape
        if (c, h, w) != (self.channels, self.image_size, self.image_size):
            expected = f"{self.channels}x{self.image_size}x{self.image_size}"
            raise ValueError(f"input {c}x{h}x{w} does not match the model's {expected}")
        p, g = self.patch, self.image_size // self.patch
        positions = self.position_embedding.weight
        patches = pixel_values.to(positions.dtype).reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        tokens = self.patch_embedding(patches.reshape(n * g * g, c * p * p)).reshape(n, g * g, -1)
        cls = (self.class_embedding + positions[0]).expand(n, 1, -1)
        x = self.pre_layernorm(torch.cat([cls, tokens + positions[1:]], dim=1))
        for layer in self.layers:
            x = layer(x)
        return self.projection(self.post_layernorm(x[:, 0]))

    @property
    def encoder_layers(self) -> list[_Layer]:
        """The encoder layers, in order (``layers`` as the type they are)."""
        return [layer for layer in self.layers if isinstance(layer, _Layer)]

    def packed_for_cpu(self, batch_size: int) -> "ImageTower":
        """A copy whose linear layers are PackedLinear (oneDNN, CPU), sized for ``batch_size`` frames.

        quick_gelu is fused into fc1 as oneDNN's swish: fc1 is scaled by 1.702 and fc2 by
        1/1.702, which is the same function (the scaled weights round once more in bf16).
        Residual additions after out_proj and fc2 happen inside the multiply.
        """
        tower = copy.deepcopy(self)
        tokens = (self.image_size // self.patch) ** 2 + 1
        rows = batch_size * tokens
        for layer in tower.encoder_layers:
            if layer.cls_only:
                layer.q_proj = PackedLinear(_plain(layer.q_proj), batch_size)
                layer.kv_proj = PackedLinear(_plain(layer.kv_proj), rows)
            else:
                layer.qkv_proj = PackedLinear(_plain(layer.qkv_proj), rows)
            out_rows = batch_size if layer.cls_only else rows
            layer.out_proj = PackedLinear(_plain(layer.out_proj), out_rows)
            fc1, fc2 = _plain(layer.fc1), _plain(layer.fc2)
            if isinstance(layer.activation, QuickGELUActivation):
                layer.fc1 = PackedLinear(_scaled(fc1, _QUICK_GELU_ALPHA, scale_bias=True), out_rows, "swish")
                layer.fc2 = PackedLinear(_scaled(fc2, 1.0 / _QUICK_GELU_ALPHA, scale_bias=False), out_rows)
                layer.activation = nn.Identity()
            else:
                layer.fc1 = PackedLinear(fc1, out_rows)
                layer.fc2 = PackedLinear(fc2, out_rows)
        tower.patch_embedding = PackedLinear(_plain(tower.patch_embedding), batch_size * (tokens - 1))
        tower.projection = PackedLinear(_plain(tower.projection), batch_size)
        return tower


def _scaled(linear: nn.Linear, factor: float, scale_bias: bool) -> nn.Linear:
    """A copy of ``linear`` with its weight (and its bias if ``scale_bias``) times ``factor``, computed in fp32."""
    weight = (linear.weight.detach().float() * factor).to(linear.weight.dtype)
    bias: torch.Tensor | None = linear.bias
    if bias is not None:
        bias = (bias.detach().float() * factor).to(bias.dtype) if scale_bias else bias.detach()
    return _linear(weight, bias)


def _plain(layer: nn.Linear | PackedLinear) -> nn.Linear:
    """``layer`` as the ``nn.Linear`` it must still be before packing; packing twice is a bug."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"expected an unpacked nn.Linear, got {type(layer).__name__}")
    return layer
