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


def build_siglip_base(directory: str | Path, seed: int = 0) -> Path:
    """Write a random-weight SigLIP base (siglip-base-patch16-224's shapes), reusing it if present.

    ``SiglipConfig``'s defaults are google/siglip-base-patch16-224's: a 12-layer 768-wide vision
    tower on 16-pixel patches of a 224x224 input (196 tokens, attention-pooling head), a 12-layer
    768-wide text tower over a 32000-token vocabulary and 64 positions. The tokenizer is the
    character-level one of tests/tiny_siglip.py (its ids fit the vocabulary); preprocessing is
    SigLIP's (square resize, no crop, mean and std 0.5).
    """
    d = Path(directory)
    if (d / "model.safetensors").exists() and (d / "preprocessor_config.json").exists():
        return d
    from transformers import SiglipConfig

    from tests.tiny_siglip import build_tokenizer, save_siglip

    d.mkdir(parents=True, exist_ok=True)
    build_tokenizer(d)
    config = SiglipConfig(text_config=dict(pad_token_id=0, eos_token_id=1, bos_token_id=1))
    return save_siglip(d, config, seed, logit_scale=10.0, logit_bias=-1.0)
