"""A tiny random-weight CLIP, saved like a hub model, for tests that need the real model classes.

No model hub is reachable in CI, and compute cost does not depend on weight values, so the
tests build a real ``CLIPModel`` from a small ``CLIPConfig`` and a working character-level
CLIP BPE tokenizer, and save both with ``save_pretrained``: the daemon then loads them through
exactly the code path it uses for ``openai/clip-vit-base-patch32``.
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


def save_clip(directory: str | Path, config_for_tokenizer, seed: int = 0) -> Path:
    """Save a random-weight CLIP with a character-level CLIP BPE tokenizer and CLIP's preprocessor config.

    ``config_for_tokenizer(bos, eos, vocab_size)`` returns the ``CLIPConfig`` to build, given the
    tokenizer's special-token ids and vocabulary size (the text tower must know them).
    """
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # Character-level BPE: every lowercase letter and digit is a token, with and without the end-of-word mark.
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
    model = CLIPModel(config_for_tokenizer(bos, eos, len(vocab))).eval()
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return d


def build_tiny_clip(directory: str | Path, seed: int = 0, hidden: int = 32) -> Path:
    """Write a tiny CLIP (224x224 input, 32-pixel patches, 2 layers) with tokenizer and preprocessor config."""
    from transformers import CLIPConfig

    def config(bos: int, eos: int, vocab_size: int) -> CLIPConfig:
        return CLIPConfig(
            text_config=dict(
                vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=eos,
            ),
            vision_config=dict(
                hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                image_size=224, patch_size=32,
            ),
            projection_dim=16,
        )

    return save_clip(directory, config, seed)
