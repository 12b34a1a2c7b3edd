"""A full-size random-weight CLIP ViT-B/32, saved like the hub model, for benchmarks.

Speed does not depend on weight values and no model hub is reachable in CI, so the
benchmarks build ``CLIPModel(CLIPConfig())`` (CLIPConfig's defaults are ViT-B/32's shapes:
12-layer 768-wide vision tower, 32-pixel patches, 224x224 input, 512-d projection) with the
character-level tokenizer of tests/tiny_clip.py, and load it through the daemon's own code path.
"""

from __future__ import annotations

from pathlib import Path


def build_vit_b32(directory: str | Path, seed: int = 0) -> Path:
    """Write a random-weight ViT-B/32 CLIP with tokenizer and preprocessor config; reuse it if present."""
    d = Path(directory)
    if (d / "model.safetensors").exists() and (d / "preprocessor_config.json").exists():
        return d
    from transformers import CLIPConfig

    from tests.tiny_clip import save_clip

    # Default shapes (ViT-B/32, 49408-token text vocabulary); only the special-token ids follow our tokenizer.
    return save_clip(d, lambda bos, eos, vocab_size: CLIPConfig(
        text_config=dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)), seed)
