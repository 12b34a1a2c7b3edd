"""Soak test: ``streamclf run`` against N real RTSP streams for a long time, with servers killed on purpose.

Not part of the test suite. It answers the questions a short test cannot: does memory
grow over time and across reconnects, do cameras come back every time, and how old are
frames when their detections are published?

    python benchmarks/soak.py                          # 4 streams, 10 minutes, a kill every 60 s
    python benchmarks/soak.py --streams 4 --duration-s 180 --stream-fps 5

It starts a mosquitto broker and N GStreamer RTSP servers (tests/servers), runs the daemon
as a subprocess with a tiny random CLIP (or ``--model DIR``), kills one RTSP server every
``--kill-every-s`` seconds (round robin) and restarts it ``--down-s`` seconds later, then
stops the daemon with SIGTERM. The result (JSON, also printed) has the daemon's RSS at the
start and end of the steady run, reconnect counts per camera, frame-age percentiles
(publish time minus capture time, seconds) and the shutdown time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.servers import MosquittoBroker, MqttCollector, RtspServer  # noqa: E402


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def percentiles(values: list[float], points=(50, 90, 99)) -> dict:
    if not values:
        return {}
    v = sorted(values)
    out = {f"p{p}": round(v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))], 4) for p in points}
    out["max"] = round(v[-1], 4)
    out["n"] = len(v)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=4, help="RTSP streams (cameras)")
    p.add_argument("--duration-s", type=float, default=600, help="steady run after every camera is online, seconds")
    p.add_argument("--stream-fps", type=int, default=10, help="frame rate of each RTSP test stream (640x480)")
    p.add_argument("--camera-fps", type=float, default=2, help="frames classified per second per camera")
    p.add_argument("--kill-every-s", type=float, default=60, help="kill one RTSP server this often; 0: never")
    p.add_argument("--down-s", type=float, default=3, help="how long a killed server stays down, seconds")
    p.add_argument("--model", help="CLIP directory; default: a tiny random CLIP built on the fly")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "soak.json"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    model = args.model
    if not model:
        from tests.tiny_clip import build_tiny_clip

        model = str(build_tiny_clip(work / "tiny-clip"))

    broker = MosquittoBroker().start()
    servers = [RtspServer(fps=args.stream_fps, path=f"/cam{i}").start() for i in range(args.streams)]
    prefix = "soak"
    live = {"fps": args.camera_fps, "open_timeout_s": 5, "read_timeout_s": 5, "stall_timeout_s": 5,
            "reconnect_backoff_initial_s": 0.5, "reconnect_backoff_max_s": 5}
    cfg = {
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": prefix, "qos": 1},
        "model": {"name": model, "device": "cpu", "batch_size": 8, "max_batch_wait_ms": 50},
        "labels": {"ball": {"prompts": ["a ball"], "threshold": 0.0},
                   "nothing": {"prompts": ["an empty scene"], "background": True}},
        "cameras": {f"cam{i}": {"source": s.url, **live} for i, s in enumerate(servers)},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log_path = work / "daemon.log"
    collector = MqttCollector(broker.host, broker.port, f"{prefix}/#")
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "streamclf", "run", "-c", str(work / "config.yaml")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    result: dict = {}
    try:
        cams = list(cfg["cameras"])

        def status(cam):
            msgs = collector.messages(f"{prefix}/{cam}/status")
            return msgs[-1][1] if msgs else None

        t_start = time.monotonic()
        while not all(status(c) == b"online" for c in cams):
            if daemon.poll() is not None or time.monotonic() - t_start > 180:
                raise SystemExit(f"cameras did not come online; log: {log_path}")
            time.sleep(0.2)
        time.sleep(5)  # warm-up: first batches, allocator settles
        rss_start = rss_mib(daemon.pid)
        t0 = time.monotonic()
        first_msg = len(collector.all)
        rss_samples = [(0.0, rss_start)]
        kills = 0
        next_kill = args.kill_every_s if args.kill_every_s > 0 else float("inf")
        while (elapsed := time.monotonic() - t0) < args.duration_s:
            if elapsed >= next_kill:
                s = servers[kills % len(servers)]
                s.kill()
                time.sleep(args.down_s)
                s.start()
                kills += 1
                next_kill += args.kill_every_s
            if int(elapsed) % 10 == 0 and elapsed - rss_samples[-1][0] >= 9:
                rss_samples.append((round(elapsed, 1), rss_mib(daemon.pid)))
            time.sleep(0.5)
        time.sleep(min(10.0, args.down_s + 5))  # let the last killed camera come back before measuring
        rss_end = rss_mib(daemon.pid)
        last_msg = len(collector.all)  # the shutdown's own "offline" is not a reconnect
        t_sig = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(30)
        shutdown_s = time.monotonic() - t_sig

        msgs = collector.all[first_msg:last_msg]
        ages = []
        per_cam = {}
        for cam in cams:
            dets = [json.loads(pl) for t, pl, _ in msgs if t == f"{prefix}/{cam}/detection"]
            cam_ages = [d["timestamp"] - d["frame_time"] for d in dets]
            ages += cam_ages
            sts = [pl for t, pl, _ in msgs if t == f"{prefix}/{cam}/status"]
            details = [json.loads(pl) for t, pl, _ in msgs if t == f"{prefix}/{cam}/status/detail"]
            went_offline = came_back = 0
            prev = b"online"  # every camera was online when the steady run began
            for st in sts:
                went_offline += prev == b"online" and st == b"offline"
                came_back += prev == b"offline" and st == b"online"
                prev = st
            per_cam[cam] = {
                "detections": len(dets),
                "went_offline": went_offline,
                "came_back_online": came_back,
                "online_at_end": prev == b"online",
                "failed_attempts_total": max((d.get("reconnects", 0) for d in details), default=0),
                "frame_age_s": percentiles(cam_ages),
            }
        out = log_path.read_text(errors="replace")
        drops = dict(re.findall(r"camera (\w+): frames dropped since start: (.*)", out))
        result = {
            "ran": " ".join(sys.argv),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                     "loadavg_end": os.getloadavg()},
            "streams": args.streams, "stream_fps": args.stream_fps, "camera_fps": args.camera_fps,
            "duration_s": args.duration_s, "kill_every_s": args.kill_every_s, "down_s": args.down_s,
            "model": "tiny random CLIP" if not args.model else args.model,
            "server_kills": kills,
            "rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                        "growth": round(rss_end - rss_start, 1), "samples": [(t, round(r, 1)) for t, r in rss_samples]},
            "frame_age_s": percentiles(ages),
            "cameras": per_cam,
            "frame_drops": drops,
            "mqtt_disconnects": out.count("MQTT disconnected"),
            "tracebacks": out.count("Traceback"),
            "shutdown": {"exit_code": rc, "seconds": round(shutdown_s, 2)},
            "daemon_log": str(log_path),
        }
    finally:
        if daemon.poll() is None:
            daemon.kill()
        collector.close()
        for s in servers:
            s.close()
        broker.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
