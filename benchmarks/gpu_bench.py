"""streamclf GPU benchmark: the model across batch sizes, and the daemon's pipeline on 16 streams.

    python benchmarks/gpu_bench.py                      # CUDA, about 3 minutes on an H100
    python benchmarks/gpu_bench.py --device cpu --quick # checks the script without a GPU

(a) model only (ClipClassifier.embed_pixels on preprocessed random batches), fp16 and bf16, batch
    sizes 1..256, eager; for fp16 also through the daemon's CUDA graphs (model.cuda_graphs: one
    launch per batch instead of ~150);
(a2) preprocessing + model from host uint8 frames (640x480 and 1280x720): the frames go to the
    device as uint8 through pinned buffers and are resized and normalised there;
(b) the daemon's pipeline (capture threads -> batcher -> classifier -> decisions -> publisher)
    in-process on 16 synthetic looping camera files (8 at 640x480, 8 at 1280x720, every frame
    sampled, realtime: false) for a fixed time, with CUDA graphs and without, preprocessing on the
    device and on the host; then on 4 of them at batch 8, where launches weigh most; classified
    frames/s from the pipeline's counter.
    No broker exists on the device machine, so the publisher queues to an unreachable one
    (bounded, oldest dropped): encoding and queueing each message is still paid.

Prints its table last; writes JSON to $OUT/gpu_bench.json when $OUT is set (else --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import LABEL_PROMPTS, gpu_run_start, synthetic_frame, synthetic_videos  # noqa: E402


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, seconds: float, min_iters: int = 3) -> tuple[int, float]:
    for _ in range(2):
        fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        fn()
        n += 1
        if n % 8 == 0:
            _sync(device)
    _sync(device)
    return n, time.perf_counter() - start


def model_sweep(model_dir: Path, device: str, precisions: list[str], batch_sizes: list[int], seconds: float,
                graphs: bool) -> list[dict]:
    """(a) images/s of the image encoder alone per precision and batch size: eager, and for the first
    precision also through the daemon's CUDA graphs (``model.cuda_graphs``, one graph per bucket)."""
    import torch

    from streamclf.config import ModelConfig
    from streamclf.model import ClipClassifier

    rows = []
    for precision in precisions:
        variants = [False, True] if graphs and device != "cpu" and precision == precisions[0] else [False]
        for cuda_graphs in variants:
            clf = ClipClassifier(ModelConfig(name=str(model_dir), device=device, precision=precision,
                                             batch_size=max(batch_sizes), cuda_graphs=cuda_graphs))
            if cuda_graphs and not clf.cuda_graph_buckets:
                print("  (a) CUDA graphs were not captured (see the log above)", flush=True)
                continue
            for bs in batch_sizes:
                pixels = torch.randn(bs, 3, 224, 224, device=clf.device).to(clf.model_dtype)
                n, elapsed = _time(partial(clf.embed_pixels, pixels), clf.device, seconds)
                rate = n * bs / elapsed
                if cuda_graphs:
                    row = next(r for r in rows if r["precision"] == clf.precision and r["batch_size"] == bs)
                    row["graph_images_per_s"] = rate
                else:
                    rows.append({"precision": clf.precision, "batch_size": bs, "images_per_s": rate})
                print(f"  (a) {clf.precision}{' CUDA graphs' if cuda_graphs else ''} batch {bs}: {rate:.0f} images/s",
                      flush=True)
            del clf
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def preprocess_sweep(model_dir: Path, device: str, precision: str, batch_sizes: list[int],
                     seconds: float) -> list[dict]:
    """(a2) host uint8 frames -> preprocessing on the device -> model: images/s per frame size and batch."""
    import numpy as np

    from streamclf.config import ModelConfig
    from streamclf.model import ClipClassifier

    clf = ClipClassifier(ModelConfig(name=str(model_dir), device=device, precision=precision, preprocess="device"))
    rows = []
    for w, h in ((640, 480), (1280, 720)):
        frames = [np.ascontiguousarray(synthetic_frame(i, w, h)[:, :, ::-1]) for i in range(8)]
        for bs in batch_sizes:
            batch = [frames[i % 8] for i in range(bs)]
            n, elapsed = _time(partial(clf.embed_images, batch), clf.device, seconds)
            pre_n, pre_elapsed = _time(partial(clf.preprocess, batch), clf.device, seconds / 2)
            rows.append({"frame": f"{w}x{h}", "batch_size": bs, "images_per_s": n * bs / elapsed,
                         "preprocess_only_images_per_s": pre_n * bs / pre_elapsed, "precision": clf.precision,
                         "preprocess": type(clf.preprocess).__name__})
            print(f"  (a2) {w}x{h} batch {bs}: {rows[-1]['images_per_s']:.0f} images/s with preprocessing "
                  f"({rows[-1]['preprocess_only_images_per_s']:.0f} preprocessing alone)", flush=True)
    del clf
    return rows


def pipeline_streams(model_dir: Path, videos: list[Path], device: str, precision: str, batch_size: int,
                     preprocess: str, cuda_graphs: bool, seconds: float) -> dict:
    """(b) The daemon's Pipeline in-process on looping files for ``seconds``; classified frames/s."""
    from streamclf.config import Config
    from streamclf.model import ClipClassifier
    from streamclf.pipeline import Pipeline

    labels = {n: ({"prompts": [p], "threshold": 0.0} if n == "car" else {"prompts": [p], "background": True})
              for n, p in LABEL_PROMPTS.items()}
    cfg = Config.model_validate({
        "mqtt": {"host": "127.0.0.1", "port": 9, "max_queued_messages": 10000},  # nothing listens: see docstring
        "model": {"name": str(model_dir), "device": device, "precision": precision, "batch_size": batch_size,
                  "max_batch_wait_ms": 20, "preprocess": preprocess, "cuda_graphs": cuda_graphs},
        "labels": labels,
        "cameras": {f"cam{k}": {"source": str(v), "fps": 10, "realtime": False, "loop": True}
                    for k, v in enumerate(videos)},
    })
    pipeline = Pipeline(cfg, ClipClassifier(cfg.model))
    samples: list[tuple[float, int]] = []

    def monitor():
        while not pipeline.stop_event.is_set():
            samples.append((time.perf_counter(), pipeline.status().inference.frames_classified))
            time.sleep(0.1)

    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    threading.Thread(target=monitor, daemon=True).start()
    deadline = time.perf_counter() + seconds + 60
    while time.perf_counter() < deadline and not (samples and samples[-1][1] > 0):
        time.sleep(0.1)
    warm_until = time.perf_counter() + min(3.0, seconds / 4)  # batches fill, clocks rise
    while time.perf_counter() < warm_until:
        time.sleep(0.05)
    t0, c0 = time.perf_counter(), pipeline.status().inference.frames_classified
    time.sleep(seconds)
    t1, c1 = time.perf_counter(), pipeline.status().inference.frames_classified
    decoded = sum(c.frames_captured for c in pipeline.status().cameras.values())
    pipeline.stop_event.set()
    runner.join(10)
    return {"streams": len(videos), "frames_per_s": (c1 - c0) / (t1 - t0), "seconds": t1 - t0,
            "batch_size": batch_size, "precision": pipeline.classifier.precision, "preprocess": preprocess,
            "cuda_graphs": bool(pipeline.classifier.cuda_graph_buckets), "frames_decoded_total": decoded}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precisions", default="fp16,bf16")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128,256")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per (a) point")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--stream-batch-size", type=int, default=64)
    p.add_argument("--stream-seconds", type=float, default=12)
    p.add_argument("--few-streams", type=int, default=4, help="(b) also with this many streams ...")
    p.add_argument("--few-batch-size", type=int, default=8, help="... at this batch size")
    p.add_argument("--frames", type=int, default=200, help="frames per synthetic file (they loop)")
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "streamclf-bench")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the machine")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.seconds, args.streams, args.stream_seconds, args.frames = "1,4", 0.2, 2, 3, 20
        args.stream_batch_size, args.few_streams, args.few_batch_size = 4, 1, 2
    out_dir = os.environ.get("OUT")
    out = args.out or (Path(out_dir) / "gpu_bench.json" if out_dir else Path("benchmarks/results/gpu.json"))
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",") if args.device != "cpu" else ["bf16"]
    started = time.perf_counter()

    info, model_dir = gpu_run_start(args.workdir)
    with ThreadPoolExecutor(1) as pool:  # write the videos while the GPU measures
        videos_future = pool.submit(synthetic_videos, args.workdir / "videos", args.streams, args.frames)
        print("(a) model only", flush=True)
        a = model_sweep(model_dir, args.device, precisions, batch_sizes, args.seconds, not args.no_graphs)
        print("(a2) preprocessing on the device + model, from host uint8 frames", flush=True)
        try:
            a2 = preprocess_sweep(model_dir, args.device, precisions[0], [b for b in batch_sizes if b >= 4][-2:] or
                                  batch_sizes[-1:], args.seconds)
        except Exception as exc:  # keep (a)'s numbers even if a later part fails
            print(f"  (a2) failed: {type(exc).__name__}: {exc}", flush=True)
            a2 = []
        videos = videos_future.result()
    b = []
    few = max(1, min(args.few_streams, len(videos)))
    scenarios = [  # (streams, batch size, preprocessing, CUDA graphs)
        (len(videos), args.stream_batch_size, "device", True),
        (len(videos), args.stream_batch_size, "device", False),
        (len(videos), args.stream_batch_size, "host", True),
        (few, args.few_batch_size, "device", True),
        (few, args.few_batch_size, "device", False),
    ]
    for streams, batch_size, preprocess, cuda_graphs in scenarios:
        print(f"(b) pipeline, {streams} streams, batch {batch_size}, preprocessing on the {preprocess}, "
              f"CUDA graphs {'on' if cuda_graphs else 'off'} ...", flush=True)
        try:
            # The files alternate 640x480 and 1280x720, so the first few are half of each too.
            b.append(pipeline_streams(model_dir, videos[:streams], args.device, precisions[0], batch_size, preprocess,
                                      cuda_graphs, args.stream_seconds))
            print(f"    {b[-1]['frames_per_s']:.0f} frames/s", flush=True)
        except Exception as exc:
            print(f"  (b) failed: {type(exc).__name__}: {exc}", flush=True)
    info["wall_s"] = round(time.perf_counter() - started, 1)
    result = {"machine": info, "a_model_only": a, "a2_preprocess_and_model": a2, "b_pipeline_streams": b,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"streamclf GPU benchmark: {info.get('gpu', 'no GPU')}, torch {info['torch']}, {info['wall_s']} s")
    rows = [["(a) model only, images/s", *[f"b{bs}" for bs in batch_sizes]]]
    for precision in precisions:
        pr = [r for r in a if r["precision"] == precision]
        if pr:
            rows.append([precision, *[f"{r['images_per_s']:.0f}" for r in pr]])
            if any(r.get("graph_images_per_s") for r in pr):
                rows.append([f"{precision} CUDA graph",
                             *[f"{r['graph_images_per_s']:.0f}" if r.get("graph_images_per_s") else "-" for r in pr]])
    print(_table(rows))
    print()
    rows = [["(a2) frames -> device preprocessing -> model", "batch", "images/s", "preprocessing alone"]]
    rows += [[f"{r['frame']} uint8, {r['precision']}", str(r["batch_size"]), f"{r['images_per_s']:.0f}",
              f"{r['preprocess_only_images_per_s']:.0f}"] for r in a2]
    print(_table(rows))
    print()
    rows = [["(b) daemon pipeline", "CUDA graphs", "streams", "batch", "frames/s"]]
    rows += [[f"{r['precision']}, preprocessing on {r['preprocess']}", "on" if r["cuda_graphs"] else "off",
              str(r["streams"]), str(r["batch_size"]), f"{r['frames_per_s']:.0f}"] for r in b]
    print(_table(rows))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
