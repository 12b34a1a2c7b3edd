"""Loading a model directory: what a user sees when it cannot be read, and where preprocessing comes from."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from streamclf.model import ModelLoadError, PreprocessSpec, load_pretrained
from tests.tiny_clip import PREPROCESSOR

# Settings no CLIP default matches, so a spec that fell back to the defaults cannot pass.
CUSTOM = {**PREPROCESSOR, "size": {"shortest_edge": 256}, "crop_size": {"height": 240, "width": 240},
          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
CUSTOM_SPEC = PreprocessSpec(shortest_edge=256, crop_height=240, crop_width=240, mean=(0.5, 0.5, 0.5),
                             std=(0.25, 0.25, 0.25))


@pytest.fixture
def model_dir(tiny_clip_dir, tmp_path) -> Path:
    """A copy of the tiny CLIP without any image-processor file; each test writes its own."""
    d = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, d)
    (d / "preprocessor_config.json").unlink()
    return d


def _unreadable(*paths: Path):
    """``os.access`` as a user who cannot read ``paths`` sees it (the tests run as root, who can read anything)."""
    real = os.access
    return lambda path, mode, **kw: False if Path(path) in paths else real(path, mode, **kw)


@pytest.mark.parametrize("unreadable, says", [
    ("model.safetensors", "model.safetensors is not readable by this process"),
    ("config.json", "config.json is not readable by this process"),
    (".", "the directory has mode"),
])
def test_an_unreadable_model_directory_says_which_file_and_how_to_fix_it(model_dir, monkeypatch, unreadable, says):
    target = model_dir if unreadable == "." else model_dir / unreadable
    monkeypatch.setattr(os, "access", _unreadable(target))
    with pytest.raises(ModelLoadError) as info:
        load_pretrained(str(model_dir))
    text = str(info.value)
    assert says in text and str(target) in text
    assert f"chmod -R a+rX {model_dir}" in text
    assert "No such file" not in text


def test_save_pretrained_weights_are_owner_only_and_still_load_when_readable(model_dir):
    """The mode that trips a service user; this process (root, or the owner) loads it."""
    weights = model_dir / "model.safetensors"
    weights.chmod(0o600)
    (model_dir / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    _, _, spec = load_pretrained(str(model_dir))
    assert spec == PreprocessSpec()


def _write_nested(d: Path) -> None:
    """processor_config.json as transformers 5 writes it: the image processor's settings nested in it."""
    nested = {"image_processor": CUSTOM, "processor_class": "CLIPProcessor"}
    (d / "processor_config.json").write_text(json.dumps(nested))


def _write_legacy(d: Path) -> None:
    (d / "preprocessor_config.json").write_text(json.dumps(CUSTOM))


def _save_with_transformers(d: Path) -> None:
    """Whatever the installed transformers' ``CLIPProcessor.save_pretrained`` writes."""
    pytest.importorskip("PIL")  # the image processor needs a backend: Pillow or torchvision
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    settings = {k: v for k, v in CUSTOM.items() if k != "image_processor_type"}
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(**settings),
                              tokenizer=CLIPTokenizer.from_pretrained(d))
    processor.save_pretrained(d)


@pytest.mark.parametrize("write", [_write_nested, _write_legacy, _save_with_transformers],
                         ids=["processor_config.json", "preprocessor_config.json", "save_pretrained"])
def test_preprocessing_comes_from_whichever_file_holds_it(model_dir, write, caplog):
    write(model_dir)
    with caplog.at_level(logging.WARNING, logger="streamclf.model"):
        _, _, spec = load_pretrained(str(model_dir))
    assert spec == CUSTOM_SPEC
    assert "CLIP's defaults" not in caplog.text


def test_no_image_processor_settings_fall_back_to_clip_defaults_with_a_warning(model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="streamclf.model"):
        _, _, spec = load_pretrained(str(model_dir))
    assert spec == PreprocessSpec()
    assert "no image processor settings" in caplog.text and "using CLIP's defaults" in caplog.text


def test_missing_weights_are_a_clear_error_not_a_traceback(model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as info:
        load_pretrained(str(model_dir))
    text = str(info.value)
    assert str(model_dir) in text and "looked in" in text and "model.name" in text
