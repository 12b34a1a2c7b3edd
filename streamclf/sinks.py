"""Where each classification goes after the model: the decider (detections, states, events and
snapshots to MQTT) and the camera's retained ``top_label`` topic. Both run on the inference thread."""

from __future__ import annotations

from streamclf.alerts import AlertPublisher
from streamclf.decisions import Decider
from streamclf.entities import Classification
from streamclf.mqtt_client import MqttClient


class DecisionSink:
    """Decide (thresholds, hysteresis, events) and publish detections, states, events and snapshots;
    the label scores go out too, rate-limited by ``AlertPublisher.publish_scores``."""

    def __init__(self, decider: Decider, alerts: AlertPublisher):
        self._decider = decider
        self._alerts = alerts

    def __call__(self, c: Classification) -> None:
        self._alerts.publish(self._decider.observe(c))
        self._alerts.publish_scores(c)


class TopLabelSink:
    """``<prefix>/<camera>/top_label``: the best-scoring label of whole frames, retained, on change only."""

    def __init__(self, publisher: MqttClient):
        self._publisher = publisher
        self._top_labels: dict[str, str] = {}

    def __call__(self, c: Classification) -> None:
        top = c.top_label
        if c.zone is None and top is not None and self._top_labels.get(c.camera) != top:
            self._top_labels[c.camera] = top
            self._publisher.set_retained(self._publisher.topic(c.camera, "top_label"), top)
