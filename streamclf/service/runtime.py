"""``Service``: attaches systemd notify, the watchdog, metrics, ``/healthz``, the live page,
``<prefix>/stats`` and SIGHUP reload to a ``Pipeline``, as its observer; it reads the pipeline's
frozen ``status()``.

Everything periodic runs in the pipeline's supervising (main) thread, on its 0.2 s tick:
if that thread ever hangs, the watchdog pings stop too, which is what we want. The
watchdog is pinged only while ``evaluate_progress`` says the pipeline makes progress, so
a hung model call stops the pings and systemd restarts the service (``WatchdogSec=``).
"""

from __future__ import annotations

import json
import logging
import threading
import time

from streamclf.config import ConfigError, load_config
from streamclf.entities import BatchReport
from streamclf.observer import PipelineObserver
from streamclf.pipeline import Pipeline
from streamclf.service.health import Progress, ProgressMonitor, RateMeter
from streamclf.service.http import HttpLimits, HttpServer, not_found
from streamclf.service.metrics import MetricsApp, PipelineMetrics
from streamclf.service.notify import SystemdNotifier
from streamclf.service.reload import ReloadError, apply_reload, plan_reload
from streamclf.service.stats import pipeline_figures, status_line
from streamclf.status import PipelineStatus
from streamclf.web.app import WebApp
from streamclf.web.live import LiveView

log = logging.getLogger(__name__)


class Service(PipelineObserver):
    """Service glue for one pipeline; ``run()`` runs the pipeline and returns its exit code."""

    status_interval_s = 2.0  # systemd's STATUS= line: often enough for `systemctl status`, cheap

    def __init__(self, pipeline: Pipeline, config_path: str, env: dict | None = None):
        self.pipeline = pipeline
        self.config_path = config_path
        self.notifier = SystemdNotifier(env)
        self.reload_requested = threading.Event()
        self.started_monotonic = time.monotonic()
        self.fps = RateMeter(window_s=10.0)
        self.monitor = ProgressMonitor()
        classifier = pipeline.classifier
        self._model_info = {
            # A Triton node's model is the server's (known once it answered), not model.name.
            "model": str(getattr(classifier, "model_name", pipeline.cfg.model.name)),
            "device": str(getattr(classifier, "device", "")),
            "precision": str(getattr(classifier, "precision", "")),
        }
        self.metrics = PipelineMetrics(self.figures, self._model_info)
        self.server: HttpServer | None = None
        self.live: LiveView | None = None  # made, and attached, when the page is first served
        self._web: WebApp | None = None
        self._progress = Progress(True, "starting")
        self._last_ping = self._last_status = 0.0
        self._last_stats = time.monotonic()
        self._last_status_text = ""
        pipeline.attach(self)

    # -- figures ------------------------------------------------------------------

    def _judge(self, status: PipelineStatus) -> Progress:
        return self.monitor.check(status.inference, status.config.service.stall_timeout_s,
                                  failed_workers=status.failed_workers)

    def progress(self) -> Progress:
        """Is the pipeline making progress now (see ``service/health.py``)?"""
        return self._judge(self.pipeline.status())

    def figures(self) -> dict:
        """The snapshot behind /metrics, <prefix>/stats and STATUS= (safe to call from any thread)."""
        status = self.pipeline.status()
        return pipeline_figures(status, self._judge(status), self.fps.rate, self.started_monotonic)

    def health(self) -> tuple[bool, dict]:
        """``/healthz``: healthy when the pipeline makes progress and the broker is connected.

        ``degraded`` (still healthy, 200) while another node holds a camera this node claims: this
        process works, and restarting it would not help (its claim would only be newer); the config
        needs fixing, and the reasons say which camera and node.
        """
        status = self.pipeline.status()
        progress = self._judge(status)
        connected = status.mqtt.connected
        reasons = []
        if not progress.ok:
            reasons.append(f"pipeline not progressing: {progress.reason}")
        if not connected:
            err = status.mqtt.last_error
            reasons.append("MQTT broker not connected" + (f" ({err})" if err else ""))
        backend = status.backend
        if not backend.connected:
            # Not a stall (batches go on, their frames dropped as inference_unavailable), so the watchdog
            # keeps pinging: a restart would not bring the server back. /healthz says it.
            reasons.append(f"inference server {backend.address} not connected ({backend.last_error})")
        conflicts = [f"camera {c.camera} is also claimed by node {c.holder}, whose claim is older; "
                     "this node does not publish it" for c in status.conflicts]
        body = {
            "status": "unhealthy" if reasons else "degraded" if conflicts else "ok",
            "reasons": reasons + conflicts,
            "progress": progress.reason,
            "mqtt_connected": connected,
            "inference_connected": backend.connected,
            "cameras": {n: c.state for n, c in status.cameras.items() if c.running},
        }
        return not reasons, body

    # -- lifecycle ------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self.pipeline.run()
        finally:
            self._stop_server()
            self.notifier.close()

    def request_reload(self) -> None:
        """Called from the SIGHUP handler: only sets a flag; the main thread reloads on its next tick."""
        self.reload_requested.set()

    # -- PipelineObserver ------------------------------------------------------------

    def on_batch(self, report: BatchReport) -> None:
        self.metrics.observe_batch(report)

    def on_started(self) -> None:
        self._start_server()
        f = self.figures()
        self.notifier.ready(status_line(f))
        log.info("ready: %s", status_line(f))

    def on_stopping(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")

    def _start_server(self) -> None:
        m = self.pipeline.cfg.metrics
        if not (m.enabled or m.page):
            return
        metrics_app = MetricsApp(self.metrics, self.health) if m.enabled else None
        if m.page and self.live is None:
            self.live = LiveView(self.pipeline, self.health, self._model_info, lambda: self.fps.rate)
            self.pipeline.attach(self.live)
        self._web = WebApp(self.live, m.max_streams) if m.page and self.live is not None else None
        web = self._web

        def route(environ, start_response):
            path = environ.get("PATH_INFO", "/")
            if metrics_app is not None and (path in MetricsApp.paths or (path == "/" and web is None)):
                return metrics_app(environ, start_response)
            if web is not None and web.handles(path):
                return web(environ, start_response)
            return not_found(start_response, "try " + " or ".join(
                (["/", "/api/status"] if web else []) + (list(MetricsApp.paths) if metrics_app else [])))

        try:
            self.server = HttpServer(route, m.host, m.port, HttpLimits(m.max_connections, m.idle_timeout_s)).start()
        except OSError as exc:
            # Classification matters more than its metrics or page: run on, but say so where operators look.
            log.error("HTTP server cannot listen on %s:%d: %s; running without metrics and the live page",
                      m.host, m.port, exc)
            return
        url = f"http://{'[' + m.host + ']' if ':' in m.host else m.host}:{self.server.port}"
        if web is not None:
            log.info("live page on %s/", url)
        if metrics_app is not None:
            log.info("metrics on %s/metrics, health on /healthz", url)

    def _stop_server(self) -> None:
        if self._web is not None:
            self._web.close()
            self._web = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- the tick (main thread, every Pipeline.tick_s) -----------------------------

    def on_tick(self) -> None:
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()
        now = time.monotonic()
        status = self.pipeline.status()
        self.fps.update(status.inference.frames_classified, now)
        progress = self._judge(status)
        if progress.ok != self._progress.ok:
            if progress.ok:
                log.info("pipeline is making progress again (%s)", progress.reason)
            else:
                log.error("pipeline is not making progress: %s; watchdog pings stop", progress.reason)
        self._progress = progress
        interval = self.notifier.watchdog_interval_s
        if interval and progress.ok and now - self._last_ping >= interval:
            self.notifier.watchdog()
            self._last_ping = now
        if self.notifier.enabled and now - self._last_status >= self.status_interval_s:
            self._last_status = now
            text = status_line(self.figures())
            if text != self._last_status_text:
                self.notifier.status(text)
                self._last_status_text = text
        stats_every = self.pipeline.cfg.service.stats_interval_s
        if stats_every and now - self._last_stats >= stats_every:
            self._last_stats = now
            self.publish_stats()

    def publish_stats(self) -> None:
        pub = self.pipeline.publisher
        pub.publish(pub.node_topic("stats"), json.dumps(self.figures(), separators=(",", ":")), qos=0)

    # -- SIGHUP ----------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and apply what changed; True if applied. Invalid: the old one stays."""
        log.info("SIGHUP: re-reading %s", self.config_path)
        self.notifier.reloading()
        try:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                log.error("config reload rejected, the running config stays: %s: %s",
                          exc.source, "; ".join(str(p) for p in exc.problems))
                return False
            old = self.pipeline.cfg
            plan = plan_reload(old, new)
            try:
                apply_reload(self.pipeline, new, plan)
            except ReloadError as exc:
                log.error("config reload failed, the running config stays: %s", exc)
                return False
            if plan.metrics_changed:
                self._stop_server()
                self._start_server()
            log.info("config reloaded from %s: %s", self.config_path, plan.describe())
            return True
        finally:
            self.notifier.ready()
