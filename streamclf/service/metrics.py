"""Prometheus metrics and ``/healthz`` (off by default), served by ``service/http.py``.

Counters the stages already keep are not counted twice: a custom collector reads the same
``pipeline_figures`` snapshot that ``<prefix>/stats`` publishes, at scrape time. Only what
needs a distribution (model call duration, batch size, frame age) is observed here, from
the pipeline's batch reports. Everything lives in a dedicated ``CollectorRegistry``, so
nothing from the process-global registry (or another library) leaks into our endpoint.
All names are ``streamclf_*`` in base units (seconds, frames, messages).
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from streamclf.capture import CameraState
from streamclf.entities import BatchReport

log = logging.getLogger(__name__)

FiguresFn = Callable[[], dict]
HealthFn = Callable[[], tuple[bool, dict]]


class FiguresCollector(Collector):
    """Turns a ``pipeline_figures`` snapshot into metric families at scrape time."""

    def __init__(self, figures: FiguresFn, model_info: dict[str, str]):
        self._figures = figures
        self._model_info = model_info

    def collect(self):
        f = self._figures()
        info = InfoMetricFamily("streamclf_build", "Version and model of the running daemon.")
        info.add_metric([], {"version": f["version"], **self._model_info})
        yield info
        yield GaugeMetricFamily("streamclf_progressing", "1 while the pipeline makes progress (see /healthz).",
                                value=1 if f["healthy"] else 0)
        yield GaugeMetricFamily("streamclf_uptime_seconds", "Seconds since the daemon started.", value=f["uptime_s"])
        yield from self._camera_families(f["cameras"])
        yield from self._published_families(f)
        yield GaugeMetricFamily("streamclf_queue_depth_frames", "Frames waiting in the batcher.",
                                value=f["queue_depth"])
        yield CounterMetricFamily("streamclf_batches", "Model calls (batches) run.", value=f["batches"])
        yield from self._mqtt_families(f["mqtt"])
        inference = f["inference"]
        yield GaugeMetricFamily("streamclf_inference_connected",
                                "1 while the model can be reached (always 1 with model.backend: local).",
                                value=1 if inference["connected"] else 0)
        yield CounterMetricFamily("streamclf_inference_failed_requests",
                                  "Requests to the model's server that failed (unreachable, timed out, refused).",
                                  value=inference["failed_requests"])
        yield CounterMetricFamily("streamclf_inference_reconnects",
                                  "Connections to the model's server made after the first.",
                                  value=inference["reconnects"])
        conflicts = GaugeMetricFamily(
            "streamclf_camera_conflict", "1 for a camera this node claims but another node (label holder) "
            "holds with an older claim: classified here, not published.", labels=["camera", "holder"])
        for cam, holder in f["conflicts"].items():
            conflicts.add_metric([cam, holder], 1)
        yield conflicts
        yield GaugeMetricFamily("streamclf_camera_conflicts", "Cameras this node claims that another node holds.",
                                value=len(f["conflicts"]))

    @staticmethod
    def _camera_families(cameras: dict):
        """Per-camera counters, drops by reason, and the camera's state."""
        per_camera = {
            "frames_captured": ("streamclf_frames_captured", "Frames read from the source (decoded or grabbed)."),
            "frames_sampled": ("streamclf_frames_sampled", "Frames sampled at the camera's fps for classification."),
            "frames_classified": ("streamclf_frames_classified", "Frames classified by the model."),
            "reconnects": ("streamclf_camera_reconnects",
                           "Times the camera was lost or could not be opened and was retried."),
        }
        for key, (name, doc) in per_camera.items():
            fam = CounterMetricFamily(name, doc, labels=["camera"])
            for cam, c in cameras.items():
                fam.add_metric([cam], c[key])
            yield fam
        dropped = CounterMetricFamily("streamclf_frames_dropped", "Frames dropped before classification, by reason.",
                                      labels=["camera", "reason"])
        for cam, c in cameras.items():
            for reason, n in c["frames_dropped"].items():
                dropped.add_metric([cam, reason], n)
        yield dropped
        state = GaugeMetricFamily("streamclf_camera_state", "1 for the camera's current state.",
                                  labels=["camera", "state"])
        online = GaugeMetricFamily("streamclf_camera_online", "1 while the camera delivers frames.", labels=["camera"])
        states = list(dict.fromkeys([s.value for s in CameraState] + ["disabled", "removed"]))  # each once
        for cam, c in cameras.items():
            for s in states:
                state.add_metric([cam, s], 1 if c["state"] == s else 0)
            online.add_metric([cam], 1 if c["state"] == CameraState.ONLINE.value else 0)
        yield state
        yield online

    @staticmethod
    def _published_families(f: dict):
        """Detections and events queued for MQTT, per camera and label."""
        for kind, key in (("detections", "detections_published"), ("events", "events_published")):
            fam = CounterMetricFamily(f"streamclf_{kind}_published",
                                      f"{kind.capitalize()} queued for MQTT, per camera and label.",
                                      labels=["camera", "label"])
            for cam, labels in f[key].items():
                for label, n in labels.items():
                    fam.add_metric([cam, label], n)
            yield fam

    @staticmethod
    def _mqtt_families(m: dict):
        """The MQTT connection: connected, queued, dropped, published, connects."""
        yield GaugeMetricFamily("streamclf_mqtt_connected", "1 while connected to the broker.",
                                value=1 if m["connected"] else 0)
        yield GaugeMetricFamily("streamclf_mqtt_queued_messages",
                                "Messages waiting for the broker or its acknowledgement.",
                                value=m["queued_messages"])
        yield CounterMetricFamily("streamclf_mqtt_dropped_messages",
                                  "Oldest messages dropped because the outage queue was full.",
                                  value=m["dropped_messages"])
        yield CounterMetricFamily("streamclf_mqtt_published_messages", "Messages handed to the MQTT client.",
                                  value=m["published_messages"])
        yield CounterMetricFamily("streamclf_mqtt_connects", "Successful (re)connections to the broker.",
                                  value=m["connects"])


class PipelineMetrics:
    """The registry, the collector and the histograms; ``observe_batch`` takes each batch's report."""

    def __init__(self, figures: FiguresFn, model_info: dict[str, str]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FiguresCollector(figures, model_info))
        self.inference_seconds = Histogram(
            "streamclf_inference_duration_seconds", "Duration of one model call (a batch), seconds.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=self.registry,
        )
        self.batch_frames = Histogram(
            "streamclf_batch_size_frames", "Frames per model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry,
        )
        self.frame_age_seconds = Histogram(
            "streamclf_frame_age_seconds", "Seconds from capture to classification of a frame.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=self.registry,
        )

    def observe_batch(self, report: BatchReport) -> None:
        self.inference_seconds.observe(report.duration_s)
        self.batch_frames.observe(report.size)
        for age in report.frame_ages_s:
            self.frame_age_seconds.observe(age)


class MetricsApp:
    """The WSGI app behind ``/metrics`` (Prometheus text format) and ``/healthz`` (JSON)."""

    paths = ("/metrics", "/healthz")

    def __init__(self, metrics: PipelineMetrics, health: HealthFn):
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._health = health

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/healthz":
            ok, body = self._health()
            data = json.dumps(body).encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store")])
            return [data]
        return self._metrics_app(environ, start_response)
