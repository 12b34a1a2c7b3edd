"""A node's preprocessing (streamclf/remote/pixels.py): the numpy port against Pillow and the local path, and
that it runs where torch and transformers are not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from streamclf.image_spec import PreprocessSpec
from streamclf.model.preprocess import centre_crop
from streamclf.remote.pixels import prepare_frame, resize_and_crop_numpy

CLIP = PreprocessSpec()
SIGLIP = PreprocessSpec(224, 224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), square=True)
CLIP_336 = PreprocessSpec(336, 336, 336)  # a larger checkpoint: every 1080p frame still shrinks
CLIP_WIDE_CROP = PreprocessSpec(224, 200, 256)  # crop wider than the resize: zero padding on the sides
ROOT = Path(__file__).resolve().parent.parent


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Uniform noise: the worst case for a resize, every tap of the filter matters and overshoots clip."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _crop(resized: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The local path's own centre crop (and zero pad) of an (h, w, 3) array."""
    return centre_crop(torch.from_numpy(np.array(resized)).permute(2, 0, 1), spec).permute(1, 2, 0).numpy()


def _pillow(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    nh, nw = spec.resized_size(*image.shape[:2])
    return _crop(np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC)), spec)


def _pillow_pass_by_pass(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Pillow's resize as two single-pass calls, the width then the height: the order Pillow before 13
    and torch's kernel always use, and Pillow 13 too unless the height shrinks much more than the width."""
    h, w = image.shape[:2]
    nh, nw = spec.resized_size(h, w)
    wide = np.asarray(Image.fromarray(image).resize((nw, h), Image.BICUBIC))
    return _crop(np.asarray(Image.fromarray(wide).resize((nw, nh), Image.BICUBIC)), spec)


# (frame height, frame width, spec): frames Pillow resizes width first, in every version.
@pytest.mark.parametrize("h, w, spec", [
    (1080, 1920, CLIP),  # a camera's 1080p: both edges shrink by 4.82
    (1920, 1080, CLIP),  # a portrait camera
    (720, 1280, CLIP),
    (2160, 3840, CLIP_336),
    (1080, 1920, SIGLIP),  # the square resize: width shrinks more than height
    (301, 701, CLIP),  # odd sizes, both shrink
    (37, 51, CLIP),  # smaller than the crop: upscaled
    (7, 3, SIGLIP),  # upscaled a lot
    (101, 333, CLIP_WIDE_CROP),  # the crop reaches past the resized frame: zero padding
])
def test_numpy_port_equals_pillow(h, w, spec):
    image = _noise(h, w)
    assert np.array_equal(resize_and_crop_numpy(image, spec), _pillow(image, spec))


@pytest.mark.parametrize("h, w, spec", [
    (225, 223, SIGLIP),  # height shrinks, width grows: Pillow 13 would run the vertical pass first
    (1920, 1080, SIGLIP),
    (300, 200, PreprocessSpec(100, 100, 100)),
    (480, 640, CLIP),
    (224, 224, CLIP),  # no resize at all
    (224, 500, CLIP),  # width only
    (500, 224, SIGLIP),  # height only
])
def test_numpy_port_equals_pillow_pass_by_pass(h, w, spec):
    image = _noise(h, w, seed=1)
    assert np.array_equal(resize_and_crop_numpy(image, spec), _pillow_pass_by_pass(image, spec))


# torch's uint8 kernel (the local path) reproduces Pillow's filter with 16-bit weights of its own
# precision: a level apart here and there where frames shrink, up to two where an edge is enlarged.
@pytest.mark.parametrize("h, w, spec, most", [
    (1080, 1920, CLIP, 1), (1920, 1080, CLIP, 1), (2160, 3840, CLIP, 1), (480, 640, CLIP, 1),
    (1080, 1920, SIGLIP, 1), (1920, 1080, SIGLIP, 1),
    (37, 51, CLIP, 2), (200, 150, SIGLIP, 2), (7, 3, SIGLIP, 2),
])
def test_numpy_port_and_the_local_path_agree(h, w, spec, most):
    image = _noise(h, w, seed=2)
    port = prepare_frame(spec, bgr=True, use_torch=False)(image).astype(np.int16)
    local = prepare_frame(spec, bgr=True, use_torch=True)(image).astype(np.int16)
    assert np.abs(port - local).max() <= most
    assert (port != local).mean() < 0.01


@pytest.mark.parametrize("use_torch", [False, True])
def test_frames_become_planar_rgb(use_torch):
    rgb = _noise(480, 640, seed=3)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    from_bgr = prepare_frame(CLIP, bgr=True, use_torch=use_torch)(bgr)
    from_rgb = prepare_frame(CLIP, bgr=False, use_torch=use_torch)(rgb)
    assert from_bgr.shape == (3, 224, 224) and from_bgr.dtype == np.uint8 and from_bgr.flags.c_contiguous
    assert np.array_equal(from_bgr, from_rgb)
    # plane c is the RGB frame's channel c, resized (the local path a level apart here and there)
    expected = resize_and_crop_numpy(rgb, CLIP).transpose(2, 0, 1).astype(np.int16)
    assert np.abs(from_rgb.astype(np.int16) - expected).max() <= (1 if use_torch else 0)


def test_torch_is_used_where_it_is_installed():
    image = _noise(480, 640, seed=4)
    assert np.array_equal(prepare_frame(CLIP)(image), prepare_frame(CLIP, use_torch=True)(image))


@pytest.mark.parametrize("frame", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                   np.zeros((10, 10, 3), np.float32)])
def test_other_arrays_are_refused(frame):
    with pytest.raises(ValueError, match=r"\(height, width, 3\) uint8"):
        prepare_frame(CLIP, use_torch=False)(frame)


BLOCKER = '''
import importlib.abc, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
    """As if torch and transformers were not installed: a node's small install."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _NotInstalled())
'''

NODE = '''
import sys
import numpy as np
for name in ("torch", "transformers"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} imported: the blocker does not work")
from streamclf.image_spec import PreprocessSpec
from streamclf.remote import pixels, protocol
info = protocol.ServerInfo(model="m", model_type="clip", score_kind="softmax", logit_scale=100.0, logit_bias=0.0,
                           embedding_dim=512, max_batch_size=8, preprocess=PreprocessSpec())
assert protocol.ServerInfo.from_json(info.to_json()) == info
frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
pixels_in = pixels.prepare_frame(info.preprocess, bgr=True)(frame)
assert pixels_in.shape == (3, 224, 224) and pixels_in.dtype == np.uint8
np.save(sys.argv[1], pixels_in)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
assert not loaded, loaded
print("ok")
'''


def test_a_node_without_torch_or_transformers(tmp_path):
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "blocker"), str(ROOT)]))
    out = tmp_path / "pixels.npy"
    run = subprocess.run([sys.executable, "-c", NODE, str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    expected = resize_and_crop_numpy(frame, CLIP)[:, :, ::-1].transpose(2, 0, 1)
    assert np.array_equal(np.load(out), expected)
