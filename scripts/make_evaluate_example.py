"""Make docs/evaluate.png: ``streamclf evaluate --plot`` on a small synthetic example.

    python scripts/make_evaluate_example.py [--out docs/evaluate.png]

Writes a 30 s video (a dark street, a blue van from 8 s to 14 s and again from 21 s to 25 s) and its
TRUTH file, builds the tiny random-weight test CLIP (tests/tiny_clip.py: no download), and runs
the real command on them. Random weights make the scores meaningless but shaped like real ones:
two clusters, a configured threshold, a suggested one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamclf.cli import main as streamclf  # noqa: E402
from tests.servers import make_video  # noqa: E402
from tests.tiny_clip import build_tiny_clip  # noqa: E402

FPS = 10
CAR = ((8.0, 14.0), (21.0, 25.0))


def _frame(i: int) -> np.ndarray:
    t = i / FPS
    img = np.full((240, 320, 3), 20, np.uint8)
    img[160:, :] = 60  # the road
    if any(s <= t < e for s, e in CAR):
        x = int((t * 40) % 200)
        img[90:200, x:x + 120] = (230, 60, 30)  # a blue van driving by
    img[(i * 5) % 240:, :6] = 200  # sensor noise of a kind: keeps frames distinct
    return img


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "evaluate.png"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model = build_tiny_clip(work / "model")
        make_video(work / "street.mp4", 30 * FPS, fps=FPS, color_fn=_frame)
        labels = {
            "car": {"prompts": ["a blue object"], "threshold": 0.5, "min_consecutive": 2, "off_delay_s": 1},
            "person": {"prompts": ["a person walking"], "threshold": 0.5},
            "street": {"prompts": ["an empty street"], "background": True},
        }
        cfg = {"mqtt": {"host": "127.0.0.1"}, "model": {"name": str(model), "device": "cpu", "precision": "fp32"},
               "labels": labels, "cameras": {"street": {"source": "street.mp4", "fps": 4}}}
        (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        truth = {"videos": {"street.mp4": {"car": [[s, e - 0.1] for s, e in CAR]}}}  # the last frame before it leaves
        (work / "truth.yaml").write_text(yaml.safe_dump(truth))
        return streamclf(["evaluate", "-c", str(work / "config.yaml"), str(work / "truth.yaml"),
                          "--plot", args.out, "--suggest"])


if __name__ == "__main__":
    sys.exit(main())
