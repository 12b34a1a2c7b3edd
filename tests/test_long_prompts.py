"""A tokenizer without a usable model_max_length: long prompts are cut to the text model's positions, with a warning."""

from __future__ import annotations

import json
import shutil

import pytest

from streamclf.config import ModelConfig
from streamclf.model import ClipClassifier


@pytest.mark.parametrize("saved_max_length", [None, 1_000_000_000_000_000_019_884_624_838_656])
def test_long_prompts_are_truncated_to_the_text_positions(tmp_path, tiny_clip_dir, caplog, saved_max_length):
    model_dir = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, model_dir)
    tok_cfg = model_dir / "tokenizer_config.json"
    settings = json.loads(tok_cfg.read_text())
    settings.pop("model_max_length", None)
    if saved_max_length is not None:  # transformers' sentinel for "no limit"
        settings["model_max_length"] = saved_max_length
    tok_cfg.write_text(json.dumps(settings))
    clf = ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision="fp32"))
    long_prompt = " ".join(["a photo of a red car parked in front of the house"] * 30)  # ~330 tokens > 77
    with caplog.at_level("WARNING", logger="streamclf"):
        labels = clf.encode_labels({"car": [long_prompt], "nothing": ["an empty street"]})
    assert labels.embeddings.shape[0] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("cut to the first 77" in m for m in warnings), warnings
