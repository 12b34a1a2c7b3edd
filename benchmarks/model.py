"""A full-size random-weight CLIP ViT-B/32, saved like the hub model, for benchmarks.

Speed does not depend on weight values and no model hub is reachable in CI, so the
benchmarks build ``CLIPModel(CLIPConfig())`` (CLIPConfig's defaults are ViT-B/32's shapes:
12-layer 768-wide vision tower, 32-pixel patches, 224x224 input, 512-d projection) with the
character-level tokenizer of tests/tiny_clip.py, and load it through the daemon's own code path.
"""

from __future__ import annotations

import json
from pathlib import Path

PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "CLIPImageProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def build_vit_b32(directory: str | Path, seed: int = 0) -> Path:
    """Write a random-weight ViT-B/32 CLIP with tokenizer and preprocessor config; reuse it if present."""
    d = Path(directory)
    if (d / "model.safetensors").exists() and (d / "preprocessor_config.json").exists():
        return d
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    d.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
            vocab[ch + suffix] = len(vocab)
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"] = bos
    vocab["<|endoftext|>"] = eos
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(seed)
    # Default shapes (ViT-B/32, 49408-token text vocabulary); only the special-token ids follow our tokenizer.
    config = CLIPConfig(text_config=dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    model = CLIPModel(config).eval()
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return d
