"""streamclf on Triton on a GPU: one node process with every stream against the same streams over several nodes.

    python benchmarks/gpu_triton.py                       # CUDA: 1 x 32 against 4 x 8, under 5 minutes
    python benchmarks/gpu_triton.py --device cpu --quick  # checks the script without a GPU (a minute)

One ``streamclf serve`` on the GPU (fp16, CUDA graphs, Triton's dynamic batching across nodes)
for the whole run; then, in ``--rounds`` alternating rounds, each layout of ``--layouts``
(PROCESSESxSTREAMS: ``1x32`` is one node process decoding 32 streams, ``4x8`` four processes of 8
each). Streams are gpu_bench.py's: synthetic looping files (alternating 640x480 and 1280x720,
every frame sampled, realtime: false). Each node is the daemon's Pipeline with
``model.backend: triton`` in a process of its own (``node`` below, started by this script); the
nodes count classified frames over one common window (same wall-clock start and length), after
a warm-up. No broker exists on the device machine, so the publishers queue to an unreachable one
(bounded, oldest dropped), as in gpu_bench.py. Triton's metrics over the window give the mean
batch the server ran and its per-request queue and compute times.

Prints its table last; writes JSON to $OUT/gpu_triton.json when $OUT is set (else --out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import LABEL_PROMPTS, REPO, gpu_run_start, synthetic_videos  # noqa: E402
from benchmarks.triton_bench import scrape, server_side  # noqa: E402


def node_config(videos: list[Path], url: str, batch_size: int) -> dict:
    labels = {n: ({"prompts": [p], "threshold": 0.0} if n == "car" else {"prompts": [p], "background": True})
              for n, p in LABEL_PROMPTS.items()}
    return {
        "mqtt": {"host": "127.0.0.1", "port": 9, "max_queued_messages": 10000},  # nothing listens: see docstring
        "model": {"backend": "triton", "triton": {"url": url, "timeout_s": 20}, "batch_size": batch_size,
                  "max_batch_wait_ms": 20},
        "labels": labels,
        "cameras": {f"cam{k}": {"source": str(v), "fps": 10, "realtime": False, "loop": True}
                    for k, v in enumerate(videos)},
    }


def node(args) -> int:
    """One node process: its Pipeline from ``--config``; classified frames over [start_at, start_at + seconds]."""
    import yaml

    from streamclf.backend import load_classifier
    from streamclf.config import Config
    from streamclf.pipeline import Pipeline

    cfg = Config.model_validate(yaml.safe_load(Path(args.config).read_text()))
    pipeline = Pipeline(cfg, load_classifier(cfg.model))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()

    def classified() -> int:
        return pipeline.status().inference.frames_classified

    time.sleep(max(0.0, args.start_at - time.time()))
    c0 = classified()
    time.sleep(max(0.0, args.start_at + args.seconds - time.time()))
    c1 = classified()
    decoded = sum(c.frames_captured for c in pipeline.status().cameras.values())
    pipeline.stop_event.set()
    runner.join(10)
    Path(args.out).write_text(json.dumps({"streams": len(cfg.cameras), "classified_before_window": c0,
                                          "frames_per_s": (c1 - c0) / args.seconds,
                                          "frames_decoded_total": decoded}) + "\n")
    return 0 if c0 > 0 else 1  # nothing classified before the window: the warm-up was too short


def run_layout(processes: int, streams: int, videos: list[Path], url: str, metrics_port: int, work: Path,
               args) -> dict:
    """``processes`` nodes of ``streams`` streams each, started together, measured over one window."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    start_at = time.time() + args.warmup_s
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    procs = []
    for i in range(processes):
        mine = [videos[(i * streams + k) % len(videos)] for k in range(streams)]
        cfg_path = work / f"node{i}.yaml"
        cfg_path.write_text(yaml.safe_dump(node_config(mine, url, args.node_batch_size), sort_keys=False))
        cmd = [sys.executable, str(Path(__file__).resolve()), "node", "--config", str(cfg_path),
               "--start-at", str(start_at), "--seconds", str(args.seconds), "--out", str(work / f"node{i}.json")]
        procs.append(subprocess.Popen(cmd, stdout=open(work / f"node{i}.log", "wb"), stderr=subprocess.STDOUT,
                                      env=env, cwd=str(REPO)))
    time.sleep(max(0.0, start_at - time.time()))
    before = scrape(metrics_port)
    time.sleep(args.seconds)
    after = scrape(metrics_port)
    rcs = [p.wait(timeout=60 + args.warmup_s) for p in procs]
    nodes = [json.loads((work / f"node{i}.json").read_text()) if (work / f"node{i}.json").exists() else None
             for i in range(processes)]
    if any(n is None for n in nodes):
        logs = "\n".join((work / f"node{i}.log").read_text(errors="replace")[-1500:] for i in range(processes))
        raise RuntimeError(f"{processes}x{streams}: nodes exited {rcs}:\n{logs}")
    return {"layout": f"{processes}x{streams}", "processes": processes, "streams_per_process": streams,
            "frames_per_s": sum(n["frames_per_s"] for n in nodes), "warm": all(rc == 0 for rc in rcs),
            "nodes": nodes, "server": server_side(before, after), "seconds": args.seconds}


def measure(args, model_dir: Path, videos_future: Future, work: Path) -> list[dict]:
    """The server started (while the videos are written), then each layout in each round."""
    from tests.servers.triton import TritonServe

    server = TritonServe(model_dir, work / "serve",
                         model={"device": args.device, "precision": args.precision, "cuda_graphs": True},
                         max_batch_size=args.server_max_batch, preferred_batch_sizes=args.preferred,
                         max_queue_delay_us=args.max_queue_delay_us, instances=args.instances)
    layouts = [tuple(int(x) for x in layout.split("x")) for layout in args.layouts.split(",")]
    rows = []
    server.start(timeout=300)
    try:
        videos = videos_future.result()
        for r in range(args.rounds):
            for processes, streams in layouts:
                row = run_layout(processes, streams, videos, server.url, server.metrics_port,
                                 work / f"r{r}-{processes}x{streams}", args)
                row["round"] = r + 1
                rows.append(row)
                print(f"  round {r + 1}: {processes} process(es) x {streams} streams: {row['frames_per_s']:.0f} "
                      f"frames/s (server batches of {row['server']['mean_batch_run'] or 0:.1f}"
                      f"{'' if row['warm'] else ', a node was not warm at the window start'})", flush=True)
    finally:
        server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["node"]:
        n = argparse.ArgumentParser(prog="gpu_triton.py node")
        n.add_argument("--config", required=True)
        n.add_argument("--start-at", type=float, required=True)
        n.add_argument("--seconds", type=float, required=True)
        n.add_argument("--out", required=True)
        return node(n.parse_args(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--layouts", default="1x32,4x8", help="PROCESSESxSTREAMS, comma-separated")
    p.add_argument("--node-batch-size", type=int, default=32, help="each node's model.batch_size")
    p.add_argument("--server-max-batch", type=int, default=128, help="serve.max_batch_size")
    p.add_argument("--preferred", default="32,64,128", help="serve.preferred_batch_sizes")
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1, help="serve.instances")
    p.add_argument("--frames", type=int, default=200, help="frames per synthetic file (they loop)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=15, help="from the nodes' start to the window's")
    p.add_argument("--seconds", type=float, default=15, help="the measured window")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "streamclf-bench")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the machine")
    args = p.parse_args(argv)
    if args.quick:
        args.layouts, args.node_batch_size, args.server_max_batch, args.preferred = "1x2,2x1", 4, 8, "4,8"
        args.frames, args.rounds, args.warmup_s, args.seconds = 20, 1, 15, 4
    if args.device == "cpu" and args.precision == "fp16":
        args.precision = "auto"  # fp16 is the GPU's; the check of the script on a CPU takes what the CPU does
    args.preferred = [int(x) for x in args.preferred.split(",") if x]
    out_dir = os.environ.get("OUT")
    out = args.out or (Path(out_dir) / "gpu_triton.json" if out_dir else REPO / "benchmarks/results/gpu-triton.json")
    started = time.perf_counter()
    info, model_dir = gpu_run_start(args.workdir)
    streams = max(p_ * s for p_, s in (tuple(int(x) for x in lo.split("x")) for lo in args.layouts.split(",")))
    # A timeout's SIGTERM ends the run through the finally clauses, so that tritonserver goes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    with ThreadPoolExecutor(1) as pool:  # write the videos while the server starts
        videos = pool.submit(synthetic_videos, args.workdir / "videos", streams, args.frames)
        rows = measure(args, model_dir, videos, Path(tempfile.mkdtemp(prefix="gpu-triton-", dir=args.workdir)))
    best = {}
    for row in rows:
        if row["layout"] not in best or row["frames_per_s"] > best[row["layout"]]["frames_per_s"]:
            best[row["layout"]] = row
    first, *rest = list(best.values())
    ratios = {f"{r['layout']}_over_{first['layout']}": r["frames_per_s"] / first["frames_per_s"] for r in rest}
    info["wall_s"] = round(time.perf_counter() - started, 1)
    result = {"machine": info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "best": best, "ratios": ratios, "rounds": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    graphs = ", CUDA graphs" if args.device != "cpu" else ""
    print(f"streamclf on Triton: {info.get('gpu', 'no GPU')}, {info['cpu']} ({info['cores']} cores), one streamclf "
          f"serve ({args.precision}{graphs}), best of {args.rounds} round(s), {info['wall_s']} s")
    for row in best.values():
        s = {k: v or 0 for k, v in row["server"].items()}  # None: no request in the window
        print(f"  {row['processes']} process(es) x {row['streams_per_process']} streams: {row['frames_per_s']:7.0f} "
              f"frames/s  (server batches of {s['mean_batch_run']:.1f}, queue {s['queue_us'] / 1000:.1f} ms, "
              f"compute {s['compute_infer_us'] / 1000:.1f} ms per request)")
    for name, value in ratios.items():
        print(f"  {name.replace('_over_', ' / ')}: {value:.2f}")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
