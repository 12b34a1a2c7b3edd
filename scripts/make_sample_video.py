#!/usr/bin/env python3
"""Make samples/driveway.mp4: the small video the shipped config.yaml reads.

A synthetic scene (sky, lawn, a driveway) where a box "vehicle" drives in, parks and
leaves, so a first run has something that changes. 320x240, 10 fps, 20 s, about 200 KB.
Run: python scripts/make_sample_video.py [output.mp4]
"""

import sys
from pathlib import Path

import cv2
import numpy as np


def frame(i: int, fps: int, w: int = 320, h: int = 240) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (235, 200, 150)  # sky (BGR)
    img[h // 2 :] = (60, 150, 60)  # lawn
    cv2.rectangle(img, (w // 3, h // 2), (2 * w // 3, h), (120, 120, 120), -1)  # driveway
    t = i / fps
    if 5 <= t < 15:  # a vehicle drives in, stays, then leaves
        x = int(min(1.0, (t - 5) / 2) * (w // 3)) if t < 13 else int((15 - t) / 2 * (w // 3))
        cv2.rectangle(img, (x, h // 2 + 20), (x + 90, h // 2 + 70), (30, 30, 200), -1)
        cv2.circle(img, (x + 20, h // 2 + 72), 10, (20, 20, 20), -1)
        cv2.circle(img, (x + 70, h // 2 + 72), 10, (20, 20, 20), -1)
    cv2.putText(img, f"{t:5.1f}s", (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return img


def main(out: str) -> None:
    fps, seconds = 10, 20
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (320, 240))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {out}")
    for i in range(fps * seconds):
        writer.write(frame(i, fps))
    writer.release()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent / "samples" / "driveway.mp4"))
