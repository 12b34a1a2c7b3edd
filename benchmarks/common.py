"""Pieces shared by the CPU and GPU benchmarks: machine description, synthetic videos, model-only timing."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/run.py` from anywhere
    sys.path.insert(0, str(REPO))

LABEL_PROMPTS = {  # the 5 labels of every benchmark, the daemon's and the naive loop's alike
    "car": "a photo of a car",
    "person": "a photo of a person",
    "dog": "a photo of a dog",
    "bicycle": "a photo of a bicycle",
    "empty": "a photo of an empty street",
}


def gpu_run_start(workdir: Path) -> tuple[dict, Path]:
    """The start of a GPU script's run: the machine, printed, and the full-size ViT-B/32 under ``workdir``."""
    from benchmarks.model import build_vit_b32

    info = machine()
    print(f"machine: {info.get('gpu', 'no GPU')}, {info['cpu']} ({info['cores']} cores), torch {info['torch']}",
          flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    return info, build_vit_b32(workdir / "vit-b32")


def machine() -> dict:
    """What the numbers came from: CPU model, cores, load average, library versions, GPU if any."""
    import cv2
    import torch
    import transformers

    from streamclf.model import cpu_has_native_bf16

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Two machines with the same model name differed here (AVX-512 with bf16 against AVX2 only),
        # and the instruction set decides precision auto and the model's speed.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),  # what precision auto goes by
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "opencv": cv2.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def synthetic_frame(i: int, w: int, h: int):
    """A BGR frame with moving gradients (the tests' default video frame) and a moving block:
    every frame differs, like a busy scene."""
    from tests.servers import gradient_frame

    f = gradient_frame(i, w, h)
    bx = (16 * i) % max(1, w - h // 4)
    f[h // 3 : h // 3 + h // 4, bx : bx + h // 4] = (20, 200, 240)
    return f


def synthetic_videos(directory: Path, count: int, frames: int, fps: int = 10) -> list[Path]:
    """``count`` mp4 files, alternating 640x480 and 1280x720, ``frames`` frames each; reused if present."""
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        w, h = (640, 480) if k % 2 == 0 else (1280, 720)
        path = directory / f"cam{k}_{w}x{h}_{frames}f.mp4"
        if not path.exists():
            tmp = path.with_suffix(".part.mp4")
            vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
            for i in range(frames):
                vw.write(synthetic_frame(i + 7 * k, w, h))
            vw.release()
            tmp.rename(path)
        paths.append(path)
    return paths


class ModelOnly:
    """(a) The image encoder alone on preprocessed random batches: images/s at ``precision`` and ``batch_size``."""

    def __init__(self, model_dir: Path, device: str, precision: str, batch_size: int):
        import torch

        from streamclf.config import ModelConfig
        from streamclf.model import ClipClassifier

        self.clf = ClipClassifier(ModelConfig(name=str(model_dir), device=device, precision=precision,
                                              batch_size=batch_size))
        self.batch_size = batch_size
        self.pixels = torch.randn(batch_size, 3, 224, 224, device=self.clf.device).to(self.clf.model_dtype)
        for _ in range(3):
            self.clf.embed_pixels(self.pixels)
        self._sync()

    def _sync(self) -> None:
        import torch

        if self.clf.device.type == "cuda":
            torch.cuda.synchronize()

    def measure(self, seconds: float) -> dict:
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds:
            self.clf.embed_pixels(self.pixels)
            n += 1
        self._sync()
        elapsed = time.perf_counter() - start
        return {"precision": self.clf.precision, "batch_size": self.batch_size,
                "images_per_s": n * self.batch_size / elapsed, "batches": n, "seconds": elapsed}

