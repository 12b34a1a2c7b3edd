"""streamclf on Triton, same run: one local daemon against the same cameras on 2 nodes into one server.

    python benchmarks/triton_bench.py              # full run, about 5 minutes on a quiet 2-core CPU
    python benchmarks/triton_bench.py --quick      # smoke test: a minute, numbers meaningless

Measures on this machine, in one process tree, in ``--rounds`` interleaved rounds (i, ii, p, i, ii, p, ...):

(i)  one daemon, ``model.backend: local``, on K synthetic camera files (run.py's part (b): the same
     files, every frame sampled, realtime: false, a real mosquitto); classified frames/s from the
     detection messages (``run.classified_rate``);
(ii) the same K files split over 2 node processes (``model.backend: triton``, no model in them)
     into one ``streamclf serve`` (PyTriton's tritonserver) on this machine, started once for the
     whole run and serving the same model at the same precision; frames/s of both nodes together;
(p)  the protocol's cost per batch, with no node running: ``--probe-requests`` times, interleaved,
     the same batch of ``--batch-size`` prepared frames through ``ClipClassifier.embed_planar``
     (normalisation + model) in this process, then as one node's request
     (``TritonClassifier.embed_images``), with Triton's counters (metrics port) read around that
     request alone: the node's time minus the server's model call for the same request is the
     protocol's cost (client and gRPC, then Triton's queue and scheduling); the server's model
     call against the in-process one is PyTriton's bridge from tritonserver's Python stub to
     ``streamclf serve`` (across processes, so as noisy as the machine).

Threads on a small machine: the server's torch gets every core (``model.threads`` unset, as the
local daemon's), the nodes have no torch, and every camera decodes at idle priority (a file with
realtime: false, ``decode_priority: auto``) in both setups, so decoding yields to the model in
(ii) across processes as it does in (i) within one. ``--server-threads`` changes the first.

The server stays up through (i) too; its CPU time in each window is reported, so an idle
server's cost to (i) is seen, not assumed. The best round of each is reported, every round in
the JSON (--out), with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, machine, synthetic_frame, synthetic_videos  # noqa: E402
from benchmarks.model import build_vit_b32  # noqa: E402
from benchmarks.run import DEFAULT_WORKDIR, DaemonRun, _config, classified_rate  # noqa: E402

IMAGE_MODEL = "streamclf_image"
# Triton's cumulative per-model counters (Prometheus, on the metrics port).
METRICS = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
           "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
           "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
           "nv_inference_compute_output_duration_us")


def scrape(metrics_port: int, model: str = IMAGE_MODEL) -> dict[str, float]:
    """Triton's counters for ``model`` from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in METRICS and f'model="{model}"' in rest:
            out[name] = out.get(name, 0.0) + float(rest.rsplit(" ", 1)[1])
    return out


def server_side(before: dict[str, float], after: dict[str, float]) -> dict:
    """What Triton did between two scrapes: requests, mean batch it ran, mean µs per request of each stage."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in METRICS}
    requests = d["nv_inference_request_success"]
    per = (lambda k: d[k] / requests) if requests else (lambda k: None)  # None: no request (JSON null)
    return {"requests": int(requests), "executions": int(d["nv_inference_exec_count"]),
            "mean_batch_run": d["nv_inference_count"] / d["nv_inference_exec_count"]
            if d["nv_inference_exec_count"] else None,
            "request_us": per("nv_inference_request_duration_us"), "queue_us": per("nv_inference_queue_duration_us"),
            "compute_input_us": per("nv_inference_compute_input_duration_us"),
            "compute_infer_us": per("nv_inference_compute_infer_duration_us"),
            "compute_output_us": per("nv_inference_compute_output_duration_us")}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants (tritonserver, its Python stubs)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree} - tree
        grew = bool(more)
        tree |= more
    return sum(cpu.get(p, 0.0) for p in tree)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / tick, sum(fields) / tick


class CpuSampler:
    """Every 0.25 s: wall time, the server tree's CPU seconds, the machine's busy and total CPU seconds."""

    def __init__(self, server_pid: int):
        self.samples: list[tuple[float, float, float, float]] = []
        self._pid = server_pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), tree_cpu_s(self._pid), *machine_busy()))
            if self._stop.wait(0.25):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def over(self, t0: float, t1: float) -> dict:
        """Shares over [t0, t1] (the nearest samples inside it): server cores used, machine busy fraction."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1] or self.samples[-2:]
        a, b = inside[0], inside[-1]
        wall = max(b[0] - a[0], 1e-9)
        return {"server_cores_used": (b[1] - a[1]) / wall, "machine_busy": (b[2] - a[2]) / max(b[3] - a[3], 1e-9)}


def run_daemons(label: str, configs: list[dict], prefix: str, expected: int, broker, workdir: Path, args,
                server_pid: int, metrics_port: int) -> dict:
    """Start ``configs`` as daemons together, wait for all to finish their files; frames/s of all together."""
    from tests.servers import MqttCollector

    with MqttCollector(broker.host, broker.port, f"{prefix}/+/detection") as collector:
        collector.wait_subscribed()
        sampler, before = CpuSampler(server_pid), scrape(metrics_port)
        daemons = [DaemonRun(cfg, workdir, f"{label}_{i}") for i, cfg in enumerate(configs)]
        try:
            rcs = [d.proc.wait(timeout=args.daemon_timeout_s) for d in daemons]
        finally:
            for d in daemons:
                d.stop()
            sampler.stop()
        after = scrape(metrics_port)
        try:
            collector.wait_for(lambda m: len(m) >= expected, timeout=10)
        except AssertionError:
            pass  # reported as frames < expected_frames
        msgs = collector.json_messages(f"{prefix}/+/detection")
    if any(rcs) or len(msgs) < 2:
        logs = "\n".join(d.output()[-2000:] for d in daemons)
        raise RuntimeError(f"{label}: daemons exited {rcs} with {len(msgs)} messages:\n{logs}")
    result = {"processes": len(configs), **classified_rate(msgs, args.batch_size), "expected_frames": expected}
    result.update(sampler.over(*result["window"]))
    result["server"] = server_side(before, after)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    return result


class ProtocolProbe:
    """(p) One batch of prepared frames: a node's request to the server against the model in this process.

    Each request waits for Triton's counters to include it (``_counted``), about a second.
    """

    def __init__(self, model_dir: Path, url: str, metrics_port: int, args):
        import numpy as np

        from streamclf.config import ModelConfig
        from streamclf.model import ClipClassifier
        from streamclf.remote.client import TritonClassifier

        self.metrics_port = metrics_port
        self.node = TritonClassifier(ModelConfig.model_validate({"backend": "triton", "triton": {"url": url}}))
        self.frames = [synthetic_frame(i, 640, 480) for i in range(args.batch_size)]
        self.prepared = [self.node.prepare_image(f) for f in self.frames]
        self.pixels = np.stack(self.prepared)
        self.local = ClipClassifier(ModelConfig(name=str(model_dir), device="cpu", precision=args.precision,
                                                batch_size=args.batch_size, threads=args.server_threads))
        for _ in range(2):
            self.local.embed_planar(self.pixels)
            self.node.embed_images(self.frames, bgr=True, prepared=self.prepared)

    def measure(self, n: int) -> dict:
        """``n`` pairs, interleaved so that both see the same background load: the batch in this process,
        then the node's request, with Triton's counters read before and after it (that request alone)."""
        local, node, server = [], [], []
        for _ in range(n):
            local += _timed(lambda: self.local.embed_planar(self.pixels), 1)
            before = scrape(self.metrics_port)
            node += _timed(lambda: self.node.embed_images(self.frames, bgr=True, prepared=self.prepared), 1)
            server.append(server_side(before, self._counted(before)))
        med = statistics.median
        # A request Triton's counters never showed (see _counted) is left out of the pairs.
        counted = [(a, b, s) for a, b, s in zip(local, node, server, strict=True) if s["requests"] == 1]
        if not counted:
            raise RuntimeError("Triton's metrics never counted the probe's requests")
        local, node = [a for a, _, _ in counted], [b for _, b, _ in counted]
        request = [s["request_us"] / 1000 for _, _, s in counted]
        compute = [s["compute_infer_us"] / 1000 for _, _, s in counted]
        return {"batch_size": len(self.frames), "requests": len(counted), "node_request_ms": med(node),
                "in_process_model_ms": med(local), "server_request_ms": med(request), "server_compute_ms": med(compute),
                # Exact per request: what the node waited beyond the server's own model call (PyTriton's
                # infer function, which includes the bridge below).
                "protocol_cost_ms": med([a - b for a, b in zip(node, compute, strict=True)]),
                "client_and_grpc_ms": med([a - b for a, b in zip(node, request, strict=True)]),
                "triton_scheduling_ms": med([a - b for a, b in zip(request, compute, strict=True)]),
                # Across processes, so as noisy as the machine: the model's call in the server against the same
                # call here, the difference being PyTriton's bridge from tritonserver's stub to streamclf serve.
                "pytriton_bridge_ms": med(compute) - med(local),
                "node_over_in_process": med(node) / med(local),
                "load_average_1m": round(os.getloadavg()[0], 2)}


    def _counted(self, before: dict[str, float]) -> dict[str, float]:
        """Triton's counters once they include the request made after ``before``: they are refreshed every
        metrics interval (2 s by default), not at each request."""
        deadline = time.monotonic() + 10
        while True:
            after = scrape(self.metrics_port)
            done = after.get("nv_inference_request_success", 0) > before.get("nv_inference_request_success", 0)
            if done or time.monotonic() > deadline:
                return after
            time.sleep(0.05)


def _timed(fn, n: int) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _configs(model_dir: Path, videos: list[Path], broker, prefix: str, url: str, args) -> tuple[dict, list[dict]]:
    """(i)'s one local daemon; (ii)'s nodes, each with every ``--nodes``-th camera (same names, one prefix)."""
    cameras = {f"cam{k}": {"source": str(v), "fps": 10, "realtime": False} for k, v in enumerate(videos)}
    local = _config(model_dir, broker, prefix, args, cameras)
    node_model = {"name": str(model_dir), "backend": "triton", "triton": {"url": url, "timeout_s": 20},
                  "batch_size": args.batch_size, "max_batch_wait_ms": args.max_batch_wait_ms}
    nodes = []
    for i in range(args.nodes):
        mine = {name: cam for k, (name, cam) in enumerate(cameras.items()) if k % args.nodes == i}
        nodes.append({**_config(model_dir, broker, prefix, args, mine), "model": node_model})
    return local, nodes


def _best(rounds: list[dict], key: str, field: str, low: bool = False) -> dict | None:
    rows = [r[key] for r in rounds if key in r]
    return (min if low else max)(rows, key=lambda x: x[field]) if rows else None


def measure(args, model_dir: Path, videos: list[Path], run_dir: Path) -> list[dict]:
    """The interleaved rounds of (i), (ii) and (p) against one ``streamclf serve``."""
    from tests.servers import MosquittoBroker
    from tests.servers.triton import TritonServe

    server_model = {"precision": args.precision, "batch_size": args.batch_size}
    if args.server_threads:
        server_model["threads"] = args.server_threads
    server = TritonServe(model_dir, run_dir / "serve", model=server_model, max_batch_size=args.server_max_batch,
                         max_queue_delay_us=args.max_queue_delay_us)
    rounds: list[dict] = []
    with MosquittoBroker() as broker:
        server.start(timeout=180)
        try:
            assert server.proc is not None
            probe = ProtocolProbe(model_dir, server.url, server.metrics_port, args)
            for r in range(args.rounds):
                prefix = f"tb{uuid.uuid4().hex[:8]}"
                local, _ = _configs(model_dir, videos, broker, prefix, server.url, args)
                expected = len(videos) * args.frames
                row = {"i": run_daemons(f"local{r}", [local], prefix, expected, broker, run_dir, args,
                                        server.proc.pid, server.metrics_port)}
                print(f"  round {r + 1} (i) one local daemon: {row['i']['frames_per_s']:.1f} frames/s "
                      f"({row['i']['frames']}/{expected})", flush=True)
                prefix = f"tb{uuid.uuid4().hex[:8]}"
                _, nodes = _configs(model_dir, videos, broker, prefix, server.url, args)
                row["ii"] = run_daemons(f"nodes{r}", nodes, prefix, expected, broker, run_dir, args,
                                        server.proc.pid, server.metrics_port)
                print(f"  round {r + 1} (ii) {args.nodes} nodes + serve: {row['ii']['frames_per_s']:.1f} frames/s "
                      f"({row['ii']['frames']}/{expected}, server batches of "
                      f"{row['ii']['server']['mean_batch_run'] or 0:.1f})", flush=True)
                row["p"] = probe.measure(args.probe_requests)
                print(f"  round {r + 1} (p) batch {args.batch_size}: node request {row['p']['node_request_ms']:.1f} "
                      f"ms, protocol {row['p']['protocol_cost_ms']:.1f} ms, model in-process "
                      f"{row['p']['in_process_model_ms']:.1f} ms", flush=True)
                rounds.append(row)
        finally:
            rc = server.stop()
            if rc:
                print(f"streamclf serve exited {rc}:\n{server.output[-2000:]}", flush=True)
    return rounds


def summary(rounds: list[dict]) -> dict:
    """Best (i), best (ii), the least disturbed (p) (lowest node request time), ratios best and per round."""
    i, ii, p = _best(rounds, "i", "frames_per_s"), _best(rounds, "ii", "frames_per_s"), \
        _best(rounds, "p", "node_request_ms", low=True)
    per_round = [r["ii"]["frames_per_s"] / r["i"]["frames_per_s"] for r in rounds]
    return {"i_local_daemon": i, "ii_nodes_and_server": ii, "p_protocol_per_batch": p,
            "ratio_ii_over_i": ii["frames_per_s"] / i["frames_per_s"] if i and ii else None,
            "ratio_by_round": per_round, "ratio_median_round": statistics.median(per_round) if per_round else None}


def print_table(result: dict, args) -> None:
    info, s = result["machine"], result["summary"]
    i, ii, p = s["i_local_daemon"], s["ii_nodes_and_server"], s["p_protocol_per_batch"]
    print()
    print(f"streamclf on Triton, same run: {info['cpu']} ({info['cores']} cores, {info['cpu_capability']}, native "
          f"bf16: {'yes' if info['native_bf16'] else 'no'}), load average {info['load_average']} at start, "
          f"{info['load_average_end']} at end; best of {len(result['rounds'])} round(s)")
    print(f"  (i)  1 local daemon, {args.cameras} files:        {i['frames_per_s']:6.1f} frames/s "
          f"(machine busy {i['machine_busy']:.0%}, idle server {i['server_cores_used']:.2f} cores)")
    print(f"  (ii) {args.nodes} nodes + 1 streamclf serve:     {ii['frames_per_s']:6.1f} frames/s "
          f"(machine busy {ii['machine_busy']:.0%}, server {ii['server_cores_used']:.2f} cores, batches of "
          f"{ii['server']['mean_batch_run'] or 0:.1f})")
    print(f"  (ii)/(i): {s['ratio_ii_over_i']:.3f} (median of the rounds' own ratios {s['ratio_median_round']:.3f})")
    print(f"  (p)  batch {p['batch_size']}: node request {p['node_request_ms']:.1f} ms, the server's model call "
          f"{p['server_compute_ms']:.1f} ms -> protocol {p['protocol_cost_ms']:.1f} ms per batch (client+gRPC "
          f"{p['client_and_grpc_ms']:.1f}, Triton scheduling {p['triton_scheduling_ms']:.1f}); the same batch in "
          f"one process {p['in_process_model_ms']:.1f} ms (PyTriton's bridge {p['pytriton_bridge_ms']:.1f} ms)")
    print(f"JSON: {args.out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="auto", help="model.precision of the local daemon and the server")
    p.add_argument("--batch-size", type=int, default=8, help="model.batch_size of the daemon and of each node")
    p.add_argument("--max-batch-wait-ms", type=float, default=50)
    p.add_argument("--server-threads", type=int, default=None, help="the server's model.threads (default: all cores)")
    p.add_argument("--server-max-batch", type=int, default=16, help="serve.max_batch_size (2 nodes' batches merge)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="serve.max_queue_delay_us")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cameras", type=int, default=4, help="synthetic files (run.py's (b))")
    p.add_argument("--frames", type=int, default=150, help="frames per file (10 fps files, all sampled)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--probe-requests", type=int, default=10, help="(p) requests per round")
    p.add_argument("--daemon-timeout-s", type=float, default=300)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="model and videos are cached here")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-triton.json")
    p.add_argument("--note", default="", help="kept in the JSON: e.g. whether the machine was quiet")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the machine")
    args = p.parse_args(argv)
    if args.quick:
        args.cameras, args.frames, args.rounds, args.probe_requests = 2, 16, 1, 3
    # run._config reads these run.py options; the daemon's defaults stand.
    args.device, args.threads, args.opencv_threads, args.decode_threads, args.decode_priority = "cpu", None, None, \
        None, None

    args.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="triton-", dir=args.workdir))
    info = machine()
    info.update({name: version(name) for name in ("nvidia-pytriton", "tritonclient")})
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average']}", flush=True)
    model_dir = build_vit_b32(args.workdir / "vit-b32")
    videos = synthetic_videos(args.workdir / "videos", args.cameras, args.frames)
    started = time.perf_counter()
    rounds = measure(args, model_dir, videos, run_dir)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = round(time.perf_counter() - started, 1)
    result = {"machine": info, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "summary": summary(rounds), "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
