"""A tiny random-weight SigLIP, saved like a hub model, for tests that need the real model classes.

Like tests/tiny_clip.py: a real ``SiglipModel`` from a small ``SiglipConfig``, saved with
``save_pretrained`` with SigLIP's image processor settings (square resize, no crop, mean and
std 0.5) and a working tokenizer, so the daemon loads it through the code path it uses for
``google/siglip-base-patch16-224``. SigLIP's own tokenizer is a SentencePiece model; here a
character-level one is built with ``tokenizers`` and saved as a ``PreTrainedTokenizerFast``
that, like SigLIP's, appends ``</s>``, pads with ``<pad>`` and returns no attention mask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 224, "width": 224},
}
TEXT_POSITIONS = 64  # SigLIP's text tower reads 64 tokens, and is trained on text padded to them


def build_tokenizer(directory: Path):
    """A character-level tokenizer with SigLIP's conventions, saved in ``directory``; returns it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "\u2581": 3}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=TEXT_POSITIONS, model_input_names=["input_ids"],
    )
    fast.save_pretrained(directory)
    return fast


def build_tiny_siglip(directory: str | Path, seed: int = 0, hidden: int = 32, logit_scale: float = 10.0,
                      logit_bias: float = -1.0) -> Path:
    """Write a tiny SigLIP (224x224 input, 32-pixel patches, 2 layers) with tokenizer and preprocessor config.

    ``logit_scale`` (the factor, not its log) and ``logit_bias`` are set so that random-weight
    scores lie inside (0, 1) rather than at its ends, where a comparison would prove little.
    """
    from transformers import SiglipConfig

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(d)
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=TEXT_POSITIONS, pad_token_id=0, eos_token_id=1,
            bos_token_id=1, projection_size=hidden,
        ),
        vision_config=dict(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
            image_size=224, patch_size=32,
        ),
    )
    return save_siglip(d, config, seed, logit_scale, logit_bias)


def save_siglip(directory: Path, config, seed: int, logit_scale: float, logit_bias: float) -> Path:
    """Save a random-weight ``SiglipModel(config)`` and SigLIP's preprocessor config in ``directory``."""
    import torch
    from transformers import SiglipModel

    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
        model.logit_bias.fill_(logit_bias)
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return directory
