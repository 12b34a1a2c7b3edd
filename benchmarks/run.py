"""streamclf throughput benchmark: one run, one machine, one table.

    python benchmarks/run.py                 # full run, a few minutes on a 2-core CPU
    python benchmarks/run.py --quick         # smoke test: seconds, numbers meaningless

Measures, in this order and in one process tree so the ratios compare like with like:

(a) model only: the image encoder on preprocessed random batches, at the configured precision
    and batch size (ClipClassifier.embed_pixels);
(b) the daemon end to end: ``python -m streamclf run`` on K synthetic camera files (alternating
    640x480 and 1280x720, mp4v, every frame sampled, realtime: false) publishing to a real
    mosquitto; classified frames/s from the detection messages' publish timestamps (one message
    per frame: one label has threshold 0, the other four are background), from the end of the
    first batch to the last message, so model loading is not counted;
(c) the naive loop: decode the same files with OpenCV, PIL image, and
    ``transformers.pipeline("zero-shot-image-classification")`` per frame with the same 5 labels;
(d) realtime capacity: N RTSP streams (one GStreamer test server, 640x480 at 5 fps, a separate
    encoder per client) at ``fps: 2`` each; the largest N tried where the daemon classifies at
    least 95% of 2N frames/s with the 95th-percentile frame age (publish time minus capture
    time) under 1 s.

(a), (b) and (c) run in ``--rounds`` interleaved rounds (a, b, c, a, b, c, ...) and the best
round of each is reported, with every round in the JSON: on a shared machine the least
disturbed round is the closest to what the hardware does, and interleaving exposes all three
to the same background load.

The model is a full-size random-weight CLIP ViT-B/32 (benchmarks/model.py): speed does not depend on
weight values. With ``--models clip,siglip`` (the default) (a) and (b) are measured in the same
rounds for a full-size random-weight SigLIP base (siglip-base-patch16-224's shapes) too, which
runs transformers' vision forward rather than the CLIP tower; (c) and (d) are CLIP's. Results go
to stdout (table last) and to JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import LABEL_PROMPTS, REPO, ModelOnly, machine, synthetic_videos  # noqa: E402
from benchmarks.model import build_siglip_base, build_vit_b32  # noqa: E402

DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "streamclf-bench"


def labels_config() -> dict:
    """One published label (threshold 0: every frame yields exactly one message), four background."""
    return {name: ({"prompts": [p], "threshold": 0.0} if name == "car" else {"prompts": [p], "background": True})
            for name, p in LABEL_PROMPTS.items()}


def _config(model_dir: Path, broker, prefix: str, args, cameras: dict) -> dict:
    model = {"name": str(model_dir), "device": args.device, "precision": args.precision,
             "batch_size": args.batch_size, "max_batch_wait_ms": args.max_batch_wait_ms}
    if args.threads:
        model["threads"] = args.threads
    if args.opencv_threads is not None:
        model["opencv_threads"] = args.opencv_threads
    if args.decode_threads is not None:
        cameras = {name: {**cam, "decode_threads": args.decode_threads} for name, cam in cameras.items()}
    if args.decode_priority is not None:
        cameras = {name: {**cam, "decode_priority": args.decode_priority} for name, cam in cameras.items()}
    return {
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": prefix, "qos": 1,
                 "max_queued_messages": 100000},
        "model": model,
        "labels": labels_config(),
        "cameras": cameras,
    }


class DaemonRun:
    """``python -m streamclf run`` on a config dict, its output in a log file."""

    def __init__(self, cfg: dict, workdir: Path, name: str):
        import yaml

        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                   OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp|analyzeduration;100000")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamclf", "run", "-c", str(self.config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class PageViewer:
    """What one open live page asks of the daemon: its live stream (/api/stream), read as it
    comes, and each camera's latest picture twice a second, until ``stop()``."""

    def __init__(self, port: int, cameras: list[str]):
        self._base = f"http://127.0.0.1:{port}"
        self._cameras = cameras
        self._stop = threading.Event()
        self.stream_bytes = self.pictures = 0
        self._threads = [threading.Thread(target=self._stream, daemon=True),
                         threading.Thread(target=self._pictures, daemon=True)]
        for t in self._threads:
            t.start()

    def _stream(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self._base + "/api/stream", timeout=5) as r:
                    while not self._stop.is_set() and (chunk := r.readline()):
                        self.stream_bytes += len(chunk)
            except OSError:
                self._stop.wait(0.1)  # the daemon is not listening yet, or has ended

    def _pictures(self) -> None:
        while not self._stop.wait(0.5):
            for camera in self._cameras:
                try:
                    with urllib.request.urlopen(f"{self._base}/api/cameras/{camera}/latest.jpg", timeout=5) as r:
                        r.read()
                        self.pictures += 1
                except OSError:
                    pass

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(6)
        return {"stream_bytes": self.stream_bytes, "pictures": self.pictures}


def classified_rate(msgs: list[dict], batch_size: int) -> dict:
    """Classified frames/s from detection messages (one per frame): frames, frames_per_s, seconds, window.

    A batch's messages go out together when it ends, so the clock starts at the end of the first
    batch and the frames counted are those classified after it. (Counting every message but
    the first over that span would credit the daemon with batch_size - 1 frames it did not
    earn: +1.2% for 600 frames in batches of 8.)
    """
    stamps = sorted(m["timestamp"] for m in msgs)
    first = min(batch_size, len(stamps) - 1)
    span = stamps[-1] - stamps[first - 1]
    return {"frames": len({(m["camera"], m["frame_index"]) for m in msgs}),
            "frames_per_s": (len(stamps) - first) / span, "seconds": span, "window": (stamps[first - 1], stamps[-1])}


def daemon_end_to_end(model_dir: Path, videos: list[Path], frames_per_file: int, args, broker, workdir: Path,
                      page_open: bool = False) -> dict:
    """(b) Non-realtime files through the daemon; classified frames/s from the detection messages.
    ``page_open``: with one live page open on the daemon's HTTP server all along (``PageViewer``)."""
    from tests.servers import MqttCollector, free_port

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    cameras = {f"cam{k}": {"source": str(v), "fps": 10, "realtime": False} for k, v in enumerate(videos)}
    port = free_port()
    cfg = {**_config(model_dir, broker, prefix, args, cameras), "metrics": {"port": port, "page": True}}
    with MqttCollector(broker.host, broker.port, f"{prefix}/+/detection") as collector:
        collector.wait_subscribed()
        daemon = DaemonRun(cfg, workdir, "daemon_files_page" if page_open else "daemon_files")
        viewer = PageViewer(port, list(cameras)) if page_open else None
        rc = daemon.proc.wait(timeout=args.daemon_timeout_s)
        viewed = viewer.stop() if viewer else None
        expected = len(videos) * frames_per_file
        try:
            collector.wait_for(lambda m: len(m) >= expected, timeout=10)
        except AssertionError:
            pass  # reported below as frames < expected_frames
        msgs = collector.json_messages(f"{prefix}/+/detection")
        daemon.stop()
    if rc != 0 or len(msgs) < 2:
        raise RuntimeError(f"daemon run failed (rc {rc}, {len(msgs)} messages):\n{daemon.output()[-3000:]}")
    result = {"cameras": len(videos), **classified_rate(msgs, args.batch_size), "expected_frames": expected,
              "sizes": sorted({v.stem.split("_")[1] for v in videos})}
    if viewed is not None:
        if not viewed["stream_bytes"] or not viewed["pictures"]:
            raise RuntimeError(f"the page viewer got nothing from the daemon: {viewed}")
        result["page_viewer"] = viewed
    return result


class NaiveLoop:
    """(c) What a user writes first: decode, PIL, the transformers pipeline per frame, same 5 labels."""

    def __init__(self, model_dir: Path, videos: list[Path], device: str):
        import cv2
        from transformers import pipeline
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.pipe = pipeline("zero-shot-image-classification", model=str(model_dir), device=device)
        self.labels = list(LABEL_PROMPTS.values())
        self.caps = [cv2.VideoCapture(str(v)) for v in videos]
        self.n = 0
        self._step()  # warm-up

    def _step(self) -> None:
        import cv2
        from PIL import Image

        cap = self.caps[self.n % len(self.caps)]
        self.n += 1
        ok, bgr = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = cap.read()
        self.pipe(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), candidate_labels=self.labels)

    def measure(self, seconds: float) -> dict:
        n, start = 0, time.perf_counter()
        while n < 4 or time.perf_counter() - start < seconds:
            self._step()
            n += 1
        elapsed = time.perf_counter() - start
        return {"frames": n, "frames_per_s": n / elapsed, "seconds": elapsed, "precision": "fp32"}


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def rtsp_trial(n: int, model_dir: Path, rtsp_url: str, args, broker, workdir: Path) -> dict:
    """Run the daemon on ``n`` RTSP cameras at 2 fps; rate and frame age over a measurement window."""
    from tests.servers import MqttCollector

    prefix = f"rt{uuid.uuid4().hex[:8]}"
    cameras = {f"rtsp{k}": {"source": rtsp_url, "fps": 2} for k in range(n)}
    with MqttCollector(broker.host, broker.port, f"{prefix}/+/detection") as collector:
        collector.wait_subscribed()
        daemon = DaemonRun(_config(model_dir, broker, prefix, args, cameras), workdir, f"daemon_rtsp{n}")
        try:
            # Warm-up: every camera has delivered a classified frame, then a few more seconds.
            ok = _wait_all_cameras(collector, n, timeout=60)
            time.sleep(args.rtsp_warmup_s)
            t0 = time.time()
            time.sleep(args.rtsp_window_s)
            t1 = time.time()
        finally:
            daemon.stop()
        msgs = [m for m in collector.json_messages(f"{prefix}/+/detection") if t0 <= m["timestamp"] < t1]
    if not ok:
        return {"streams": n, "ok": False, "frames_per_s": 0.0, "p95_age_s": None, "note": "not all cameras delivered"}
    ages = [m["timestamp"] - m["frame_time"] for m in msgs]
    rate = len(msgs) / (t1 - t0)
    p95 = _percentile(ages, 0.95) if ages else float("inf")
    per_cam = [sum(1 for m in msgs if m["camera"] == f"rtsp{k}") / (t1 - t0) for k in range(n)]
    passed = rate >= 0.95 * 2 * n and p95 < 1.0
    return {"streams": n, "ok": passed, "frames_per_s": rate, "p95_age_s": p95, "min_camera_fps": min(per_cam)}


def _wait_all_cameras(collector, n: int, timeout: float) -> bool:
    """True once each of ``n`` cameras has published a detection (topics <prefix>/<camera>/detection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len({t.split("/")[1] for t, _, _ in collector.all}) >= n:
            return True
        time.sleep(0.2)
    return False


def realtime_capacity(model_dir: Path, args, broker, workdir: Path, e2e_fps: float) -> dict:
    """(d) Largest number of 2-fps RTSP streams sustained with p95 frame age < 1 s (a short search)."""
    from tests.servers import RtspServer, have_rtsp

    if not have_rtsp():
        return {"skipped": "no GStreamer RTSP server (see tests/servers)"}
    trials = []
    guess = max(1, int(e2e_fps / 2 * 0.8))
    with RtspServer(fps=args.rtsp_server_fps) as rtsp:
        n, best, worst_fail = guess, 0, None
        for _ in range(args.rtsp_trials):
            r = rtsp_trial(n, model_dir, rtsp.url, args, broker, workdir)
            trials.append(r)
            print(f"  (d) {n} streams: {r['frames_per_s']:.1f} frames/s, p95 age "
                  f"{r['p95_age_s'] if r['p95_age_s'] is None else round(r['p95_age_s'], 3)} s -> "
                  f"{'ok' if r['ok'] else 'not sustained'}", flush=True)
            if r["ok"]:
                best = max(best, n)
            else:
                worst_fail = n if worst_fail is None else min(worst_fail, n)
            if worst_fail is not None and worst_fail == best + 1:
                break
            if worst_fail is None:
                n = n + max(1, n // 4)
            else:
                n = (best + worst_fail) // 2 if best else max(1, worst_fail // 2)
                if n in {t["streams"] for t in trials}:
                    break
    return {"max_streams": best, "bracketed_by_failure_at": worst_fail, "fps_per_stream": 2,
            "server": f"GStreamer videotestsrc 640x480 at {args.rtsp_server_fps} fps, x264, one encoder per client",
            "trials": trials}


def _fmt_table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i != 1 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="auto", help="model.precision for (a), (b), (d) (default auto)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-wait-ms", type=float, default=50)
    p.add_argument("--threads", type=int, default=None, help="model.threads (default: all cores)")
    p.add_argument("--opencv-threads", type=int, default=None, help="model.opencv_threads (default: the daemon's)")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="cameras.*.decode_threads (default: the daemon's; 0: FFmpeg's choice)")
    p.add_argument("--decode-priority", choices=["auto", "normal", "idle"], default=None,
                   help="cameras.*.decode_priority (default: the daemon's, auto)")
    p.add_argument("--parts", default="abcd", help="which of (a)-(d) to run (ratios need a, b and c)")
    p.add_argument("--models", default="clip,siglip",
                   help="models for (a) and (b): clip (ViT-B/32) and/or siglip (SigLIP base, patch 16)")
    p.add_argument("--page-open", action="store_true",
                   help="each round runs (b) twice: as usual, and with one live page open (b_page)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cameras", type=int, default=4, help="synthetic files for (b)")
    p.add_argument("--frames", type=int, default=150, help="frames per file for (b) (10 fps files, all sampled)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of (a), (b), (c); the best is reported")
    p.add_argument("--model-seconds", type=float, default=10)
    p.add_argument("--naive-seconds", type=float, default=12)
    p.add_argument("--rtsp-trials", type=int, default=4)
    p.add_argument("--rtsp-warmup-s", type=float, default=4)
    p.add_argument("--rtsp-window-s", type=float, default=12)
    p.add_argument("--rtsp-server-fps", type=int, default=5)
    p.add_argument("--skip-rtsp", action="store_true")
    p.add_argument("--daemon-timeout-s", type=float, default=600)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="model and videos are cached here")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the machine")
    args = p.parse_args(argv)
    if args.quick:
        args.cameras, args.frames, args.model_seconds, args.naive_seconds, args.rounds = 2, 16, 1, 2, 1
        args.rtsp_trials, args.rtsp_warmup_s, args.rtsp_window_s = 1, 1, 3

    if "c" in args.parts:
        try:
            import PIL  # noqa: F401  (the transformers pipeline of (c) reads PIL images)
        except ImportError:
            p.error("(c), the naive pipeline loop, needs Pillow: run scripts/setup.sh --test "
                    "(or leave c out of --parts)")

    from tests.servers import MosquittoBroker

    args.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average']}", flush=True)
    model_dir = build_vit_b32(args.workdir / "vit-b32")
    siglip_dir = build_siglip_base(args.workdir / "siglip-base") if "siglip" in args.models else None
    videos = synthetic_videos(args.workdir / "videos", args.cameras, args.frames)

    # The machine may be shared: (a), (b) and (c) run in interleaved rounds, so each sees the same
    # background load over time, and the best round of each is reported (the least disturbed).
    rounds: list[dict] = []
    model = ModelOnly(model_dir, args.device, args.precision, args.batch_size) if "a" in args.parts else None
    if "clip" not in args.models:
        model = None
    siglip = (ModelOnly(siglip_dir, args.device, args.precision, args.batch_size)
              if siglip_dir is not None and "a" in args.parts else None)
    naive = NaiveLoop(model_dir, videos, args.device) if "c" in args.parts else None
    with MosquittoBroker() as broker:
        for r in range(args.rounds):
            row: dict = {}
            if model:
                row["a"] = model.measure(args.model_seconds)
                row["a"]["load_average_1m"] = round(os.getloadavg()[0], 2)
                print(f"  round {r + 1} (a) model only: {row['a']['images_per_s']:.1f} images/s "
                      f"({row['a']['precision']}, batch {args.batch_size})", flush=True)
            if siglip:
                row["a_siglip"] = siglip.measure(args.model_seconds)
                row["a_siglip"]["load_average_1m"] = round(os.getloadavg()[0], 2)
                print(f"  round {r + 1} (a) SigLIP model only: {row['a_siglip']['images_per_s']:.1f} images/s "
                      f"({row['a_siglip']['precision']}, batch {args.batch_size})", flush=True)
            for key, directory in (("b", model_dir if "clip" in args.models else None), ("b_siglip", siglip_dir)):
                if "b" not in args.parts or directory is None:
                    continue
                row[key] = daemon_end_to_end(directory, videos, args.frames, args, broker, run_dir)
                row[key]["load_average_1m"] = round(os.getloadavg()[0], 2)
                print(f"  round {r + 1} ({key}) daemon: {row[key]['frames_per_s']:.1f} frames/s "
                      f"({row[key]['frames']}/{row[key]['expected_frames']} frames)", flush=True)
            if "b" in args.parts and args.page_open:
                row["b_page"] = daemon_end_to_end(model_dir, videos, args.frames, args, broker, run_dir, page_open=True)
                row["b_page"]["load_average_1m"] = round(os.getloadavg()[0], 2)
                print(f"  round {r + 1} (b) daemon, one live page open: {row['b_page']['frames_per_s']:.1f} frames/s "
                      f"({row['b_page']['frames']}/{row['b_page']['expected_frames']} frames, "
                      f"{row['b_page']['page_viewer']})", flush=True)
            if naive:
                row["c"] = naive.measure(args.naive_seconds)
                row["c"]["load_average_1m"] = round(os.getloadavg()[0], 2)
                print(f"  round {r + 1} (c) naive pipeline: {row['c']['frames_per_s']:.2f} frames/s", flush=True)
            rounds.append(row)
        del model, naive, siglip

        def best(part: str, key: str) -> dict | None:
            rows = [row[part] for row in rounds if part in row]
            return max(rows, key=lambda x: x[key]) if rows else None

        a, b, c = best("a", "images_per_s"), best("b", "frames_per_s"), best("c", "frames_per_s")
        a_siglip, b_siglip = best("a_siglip", "images_per_s"), best("b_siglip", "frames_per_s")
        if "d" not in args.parts or args.skip_rtsp:
            d = {"skipped": "not requested"}
        else:
            print("(d) realtime capacity over RTSP ...", flush=True)
            d = realtime_capacity(model_dir, args, broker, run_dir, b["frames_per_s"] if b else 20.0)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    ratios = {}
    if a and b:
        ratios["b_over_a"] = b["frames_per_s"] / a["images_per_s"]
        # Each round's (b) over the (a) measured just before it: on a machine whose speed drifts,
        # the spread of these says how much of the ratio of the bests is luck.
        per_round = [row["b"]["frames_per_s"] / row["a"]["images_per_s"] for row in rounds]
        ratios["b_over_a_by_round"] = per_round
        ratios["b_over_a_median_round"] = statistics.median(per_round)
    if a_siglip and b_siglip:
        ratios["siglip_b_over_a"] = b_siglip["frames_per_s"] / a_siglip["images_per_s"]
    if b and c:
        ratios["b_over_c"] = b["frames_per_s"] / c["frames_per_s"]
        per_round = [row["b"]["frames_per_s"] / row["c"]["frames_per_s"] for row in rounds]
        ratios["b_over_c_by_round"] = per_round
        ratios["b_over_c_median_round"] = statistics.median(per_round)
    result = {"machine": info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "a_model_only": a, "b_daemon_end_to_end": b, "b_with_a_page_open": best("b_page", "frames_per_s"),
              "c_naive_pipeline": c, "d_realtime_capacity": d,
              "a_model_only_siglip": a_siglip, "b_daemon_end_to_end_siglip": b_siglip,
              "ratios": ratios, "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    cap = (f"{d['max_streams']} streams x 2 fps" if "max_streams" in d else d.get("skipped", "?"))
    rows = [("measure", "value", "notes")]
    if a:
        rows.append(("(a) model only", f"{a['images_per_s']:.1f} img/s",
                     f"precision {a['precision']}, batch {a['batch_size']}"))
    if b:
        rows.append(("(b) daemon end to end", f"{b['frames_per_s']:.1f} frames/s",
                     f"{b['cameras']} files ({', '.join(b['sizes'])}), real mosquitto, same precision and batch"))
    if a_siglip:
        rows.append(("(a) SigLIP model only", f"{a_siglip['images_per_s']:.1f} img/s",
                     f"SigLIP base/16 (transformers' vision forward), precision {a_siglip['precision']}, "
                     f"batch {a_siglip['batch_size']}"))
    if b_siglip:
        rows.append(("(b) SigLIP daemon end to end", f"{b_siglip['frames_per_s']:.1f} frames/s",
                     f"as (b), SigLIP base/16; (b)/(a) {ratios.get('siglip_b_over_a', float('nan')):.3f}"))
    if c:
        rows.append(("(c) naive pipeline loop", f"{c['frames_per_s']:.2f} frames/s",
                     "transformers pipeline per frame, fp32, 5 labels"))
    rows.append(("(d) realtime capacity", cap, "p95 frame age < 1 s, >= 95% of frames classified"))
    if "b_over_a" in ratios:
        rows.append(("(b)/(a)", f"{ratios['b_over_a']:.3f}",
                     f"goal >= 0.9; best (b) over best (a); median of the rounds' own ratios "
                     f"{ratios['b_over_a_median_round']:.3f}"))
    if "b_over_c" in ratios:
        rows.append(("(b)/(c)", f"{ratios['b_over_c']:.2f}",
                     f"goal >= 8 with precision auto; median of the rounds' own ratios "
                     f"{ratios['b_over_c_median_round']:.2f}"))
    print()
    print(f"streamclf benchmark on {info['cpu']} ({info['cores']} cores, {info['cpu_capability']}, "
          f"native bf16: {'yes' if info['native_bf16'] else 'no'}), torch {info['torch']}; load average "
          f"{info['load_average']} at start, {info['load_average_end']} at end; best of {len(rounds)} round(s)")
    print(_fmt_table(rows))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
