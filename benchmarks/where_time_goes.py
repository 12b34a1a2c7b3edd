"""Where the daemon's time goes: (b)'s files run in this process, timed from inside.

    python benchmarks/where_time_goes.py             # 3 runs on 4 files, about 4 minutes on 2 cores
    python benchmarks/where_time_goes.py --quick     # checks the script in seconds

``benchmarks/run.py`` gives (b)/(a) from two processes, so on a VM whose speed drifts by 10%
within minutes a ratio moves by as much as any change we make. This script answers the
question behind the ratio with less noise: it runs the daemon's own Pipeline on the same
synthetic files in this process, times every forward pass and every preprocessing call in the
inference thread, and times the model alone (the same ClipClassifier, same batch) right before
and after each run. Printed per run, and written as JSON:

- frames/s of the run, and over the model alone (the mean of the before and after timings);
  and "steady" frames/s, from the end of the first batch to the end of the last, as run.py's (b)
  counts (the run's own wall time includes start-up and the run loop's 0.2 s ticks at the end),
  with how many batches were full;
- the forward pass: median per batch in the daemon, and its share of the run's wall time
  (near 100%: the daemon is the model, and what is left is the model being slower beside the
  decoders; well below: something else holds the inference thread);
- preprocessing left in the inference thread (median per batch), and the share of the time
  after the first batch the inference thread spent waiting for frames;
- the process's CPU time over cores x wall (below 100%: cores stood idle).

Publishing goes to a real mosquitto started for the run. Settings match run.py's (b).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, machine, synthetic_videos  # noqa: E402
from benchmarks.model import build_vit_b32  # noqa: E402
from benchmarks.run import labels_config  # noqa: E402


class _TimedPreprocess:
    """The classifier's preprocessor with its calls timed; ``prepare`` (capture threads) is passed through."""

    def __init__(self, inner, times: list[float]):
        self._inner, self._times = inner, times
        self.prepare = inner.prepare

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self._times.append(time.perf_counter() - t)


def _model_alone(clf, batches: int) -> float:
    """Median seconds per batch of the model alone (first call not counted).

    Timed on a thread that becomes the model's thread and then ends, as the daemon's inference
    thread does, so that no second torch worker pool outlives it (streamclf/model/torch_threads.py).
    """
    import torch

    from streamclf.model.torch_threads import in_own_thread

    def run() -> float:
        clf.become_model_thread()
        pixels = torch.randn(clf.cfg.batch_size, 3, 224, 224).to(clf.model_dtype)
        times = []
        for _ in range(batches + 1):
            t = time.perf_counter()
            clf.embed_pixels(pixels)
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    return in_own_thread(run, "model-alone")


def one_run(clf, cfg_dict: dict, batches_alone: int) -> dict:
    import yaml

    from streamclf.config import parse_config
    from streamclf.pipeline import Pipeline

    cfg = parse_config(yaml.safe_dump(cfg_dict))
    before = _model_alone(clf, batches_alone)
    forward, preprocess, waits, starts, sizes = [], [], [], [], []
    # The image tower is what a batch's forward pass runs (on the CPU, where this runs, there are no
    # CUDA graphs to go around it); wrapping it times the forward alone.
    tower, inner = clf.image_tower, clf.preprocess

    def timed_encode(p):
        t = time.perf_counter()
        starts.append(t)
        try:
            return tower(p)
        finally:
            forward.append(time.perf_counter() - t)
            sizes.append(len(p))

    clf.image_tower, clf.preprocess = timed_encode, _TimedPreprocess(inner, preprocess)
    try:
        pipeline = Pipeline(cfg, clf)
        next_batch = pipeline.batcher.next_batch

        def timed_next_batch(*args, **kwargs):
            t = time.perf_counter()
            try:
                return next_batch(*args, **kwargs)
            finally:
                if starts:  # waits before the first batch are start-up, counted apart
                    waits.append(time.perf_counter() - t)

        pipeline.batcher.next_batch = timed_next_batch
        wall0, cpu0 = time.perf_counter(), time.process_time()
        pipeline.run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        clf.image_tower, clf.preprocess = tower, inner
    after = _model_alone(clf, batches_alone)
    alone_fps = cfg.model.batch_size / ((before + after) / 2)
    classified = pipeline.status().inference.frames_classified
    fps = classified / wall
    # Frames after the first batch over the time from its end to the last batch's end, as run.py's
    # (b) counts: neither start-up nor the run loop's 0.2 s ticks at the end are in it.
    steady = sum(sizes[1:]) / (starts[-1] + forward[-1] - starts[0] - forward[0]) if len(starts) > 1 else None
    cores = os.cpu_count() or 1
    return {
        "frames": classified, "wall_s": wall, "frames_per_s": fps,
        "model_alone_ms_per_batch": [before * 1e3, after * 1e3], "model_alone_images_per_s": alone_fps,
        "daemon_over_model_alone": fps / alone_fps,
        "steady_over_model_alone": steady / alone_fps if steady else None,
        "forward_ms_median": statistics.median(forward) * 1e3 if forward else None, "batches": len(forward),
        "forward_share_of_wall": sum(forward) / wall,
        "preprocess_ms_median": statistics.median(preprocess) * 1e3 if preprocess else None,
        "cpu_share": cpu / (cores * wall), "cores": cores,
        "steady_frames_per_s": steady,
        "full_batches": sum(1 for n in sizes if n == cfg.model.batch_size),
        # From the first forward pass to the end: start-up (opening files, the broker) left out.
        "start_up_s": starts[0] - wall0 if starts else None,
        "forward_share_after_start_up": sum(forward) / (wall0 + wall - starts[0]) if starts else None,
        "waiting_for_frames_share_after_start_up": sum(waits) / (wall0 + wall - starts[0]) if starts else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-wait-ms", type=float, default=50)
    p.add_argument("--decode-priority", choices=["auto", "normal", "idle"], default=None,
                   help="cameras.*.decode_priority (default: the daemon's, auto)")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--frames", type=int, default=150, help="frames per file (10 fps files, all sampled)")
    p.add_argument("--batches-alone", type=int, default=6, help="model-alone batches timed before and after each run")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "streamclf-bench")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "where-time-goes.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the machine")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.cameras, args.frames, args.batches_alone = 1, 2, 16, 2

    from streamclf.config import ModelConfig
    from streamclf.logs import setup_logging
    from streamclf.model import ClipClassifier
    from tests.servers import MosquittoBroker

    setup_logging("WARNING", "text")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_vit_b32(args.workdir / "vit-b32")
    videos = synthetic_videos(args.workdir / "videos", args.cameras, args.frames)
    model = {"name": str(model_dir), "device": "cpu", "precision": args.precision,
             "batch_size": args.batch_size, "max_batch_wait_ms": args.max_batch_wait_ms}
    cameras = {f"cam{i}": {"source": str(v), "fps": 10, "realtime": False} for i, v in enumerate(videos)}
    if args.decode_priority:
        for c in cameras.values():
            c["decode_priority"] = args.decode_priority
    clf = ClipClassifier(ModelConfig(**{k: v for k, v in model.items() if k != "max_batch_wait_ms"}))
    runs = []
    with MosquittoBroker() as broker:
        cfg = {"mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": "timeline", "qos": 1,
                        "max_queued_messages": 100000},
               "model": model, "labels": labels_config(), "cameras": cameras}
        for i in range(args.runs):
            r = one_run(clf, cfg, args.batches_alone)
            runs.append(r)
            print(f"run {i + 1}: {r['frames']} frames in {r['wall_s']:.1f} s = {r['frames_per_s']:.2f} frames/s "
                  f"(steady {r['steady_frames_per_s']:.2f}, {r['steady_over_model_alone']:.3f} of the model alone; "
                  f"{r['full_batches']}/{r['batches']} batches full), "
                  f"{r['daemon_over_model_alone']:.3f} of the model alone ({r['model_alone_images_per_s']:.2f} img/s; "
                  f"{r['model_alone_ms_per_batch'][0]:.0f}/{r['model_alone_ms_per_batch'][1]:.0f} ms a batch "
                  f"before/after); forward {r['forward_ms_median']:.0f} ms a batch, "
                  f"{100 * r['forward_share_of_wall']:.1f}% of the wall "
                  f"({100 * r['forward_share_after_start_up']:.1f}% after {r['start_up_s']:.2f} s of start-up, "
                  f"{100 * r['waiting_for_frames_share_after_start_up']:.1f}% waiting for frames); "
                  f"preprocessing {r['preprocess_ms_median']:.1f} ms a batch; CPU {100 * r['cpu_share']:.0f}% of "
                  f"{r['cores']} cores", flush=True)
    result = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items()}, "precision": clf.precision,
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
