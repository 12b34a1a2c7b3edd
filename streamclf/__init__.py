"""streamclf: zero-shot CLIP classification of camera streams, published to MQTT."""

__version__ = "0.1.0"
