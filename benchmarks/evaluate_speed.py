"""``streamclf evaluate`` against the daemon's ``realtime: false`` path, same files, same run.

    python benchmarks/evaluate_speed.py             # 10 minutes of 640x480 footage at 2 fps
    python benchmarks/evaluate_speed.py --quick     # smoke test: seconds, numbers meaningless

Both score the same mp4 with the full-size random-weight ViT-B/32 (benchmarks/model.py), sampled
at 2 fps: (b) the daemon (``streamclf run``, ``realtime: false``) publishing to a real broker, its
frames/s measured as benchmarks/run.py part (b) measures it, and (e) ``streamclf evaluate`` on a
TRUTH file for that video, its frames/s from its own report (classified frames over the wall time
of scoring, model load excluded). Interleaved rounds (b, e, b, e, ...); the best of each and their
ratio are printed with the machine's figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, machine, synthetic_frame  # noqa: E402
from benchmarks.model import build_vit_b32  # noqa: E402
from benchmarks.run import DaemonRun, _config  # noqa: E402


def footage(directory: Path, seconds: int, fps: int) -> Path:
    """A 640x480 mp4 of ``seconds`` seconds at ``fps``; reused if present."""
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"evaluate_640x480_{seconds}s_{fps}fps.mp4"
    if not path.exists():
        tmp = path.with_suffix(".part.mp4")
        vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (640, 480))
        for i in range(seconds * fps):
            vw.write(synthetic_frame(i, 640, 480))
        vw.release()
        tmp.rename(path)
    return path


def daemon_fps(cfg: dict, broker, prefix: str, workdir: Path, expected: int, batch_size: int, timeout_s: float) -> dict:
    """(b) frames/s of ``streamclf run``, from the timestamps of its detection messages (as run.py)."""
    from tests.servers import MqttCollector

    with MqttCollector(broker.host, broker.port, f"{prefix}/+/detection") as collector:
        collector.wait_subscribed()
        daemon = DaemonRun(cfg, workdir, "daemon_eval_speed")
        rc = daemon.proc.wait(timeout=timeout_s)
        try:
            collector.wait_for(lambda m: len(m) >= expected, timeout=10)
        except AssertionError:
            pass
        msgs = collector.json_messages(f"{prefix}/+/detection")
        daemon.stop()
    if rc != 0 or len(msgs) < 2:
        raise RuntimeError(f"daemon run failed (rc {rc}, {len(msgs)} messages):\n{daemon.output()[-3000:]}")
    stamps = sorted(m["timestamp"] for m in msgs)
    first = min(batch_size, len(stamps) - 1)
    return {"frames": len(msgs), "frames_per_s": (len(stamps) - first) / (stamps[-1] - stamps[first - 1])}


def evaluate_fps(cfg: dict, video: Path, workdir: Path) -> dict:
    """(e) frames/s of ``streamclf evaluate`` on the same video, from its JSON report."""
    import yaml

    config = workdir / "evaluate_speed.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    truth = workdir / "evaluate_speed_truth.yaml"
    truth.write_text(yaml.safe_dump({"videos": {str(video): {"camera": "cam0", "car": [[0.0, 1.0]]}}}))
    report = workdir / "evaluate_speed.json"
    subprocess.run([sys.executable, "-m", "streamclf", "evaluate", "-c", str(config), str(truth), "--quiet",
                    "--json", str(report)], check=True, cwd=str(REPO), stdout=subprocess.DEVNULL,
                   env={**__import__("os").environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    body = json.loads(report.read_text())
    return {"frames": body["labels"]["car"]["frames"], "frames_per_s": body["frames_per_s"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=600, help="footage length (default 600: ten minutes)")
    p.add_argument("--sample-fps", type=float, default=2.0, help="the camera's fps (default 2)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the best of each is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="20 s of footage and a tiny model: a smoke test")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "streamclf-bench")
    args = p.parse_args(argv)
    args.max_batch_wait_ms, args.threads, args.opencv_threads = 50, None, None
    args.decode_threads = args.decode_priority = None
    from tests.servers import MosquittoBroker

    if args.quick:
        from tests.tiny_clip import build_tiny_clip

        args.seconds, model_dir = 20, build_tiny_clip(args.workdir / "tiny-clip")
    else:
        model_dir = args.workdir / "vit-b32-random"
        if not (model_dir / "config.json").exists():
            build_vit_b32(model_dir)
    video = footage(args.workdir, args.seconds, 4)
    expected = int(args.seconds * args.sample_fps)
    rounds = []
    with MosquittoBroker() as broker:
        for r in range(args.rounds):
            prefix = f"evs{uuid.uuid4().hex[:8]}"
            cfg = _config(model_dir, broker, prefix, args,
                          {"cam0": {"source": str(video), "fps": args.sample_fps, "realtime": False}})
            b = daemon_fps(cfg, broker, prefix, args.workdir, expected, args.batch_size, 3600)
            e = evaluate_fps(cfg, video, args.workdir)
            print(f"round {r + 1}: (b) daemon {b['frames_per_s']:.2f} frames/s ({b['frames']} frames), "
                  f"(e) evaluate {e['frames_per_s']:.2f} frames/s ({e['frames']} frames)", flush=True)
            rounds.append({"b": b, "e": e})
    best_b = max(r["b"]["frames_per_s"] for r in rounds)
    best_e = max(r["e"]["frames_per_s"] for r in rounds)
    print(json.dumps({"machine": machine(), "footage_s": args.seconds, "sample_fps": args.sample_fps,
                      "b_daemon_frames_per_s": round(best_b, 2), "e_evaluate_frames_per_s": round(best_e, 2),
                      "e_over_b": round(best_e / best_b, 3), "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
