"""Publishing to MQTT (paho-mqtt 2.x), surviving broker outages without losing events.

Messages first go into our own bounded queue (``mqtt.max_queued_messages``): when it
overflows the *oldest* message is dropped and counted, because paho's own limit drops
the newest. Retained messages are state: each retained topic waits at most once, with its
newest value, outside that bound, so an overflow drops detections, events and stats, never
an ON/OFF state (the retained topics are as many as the config makes). A sender thread
hands messages to paho only while connected and keeps at most ``inflight_window``
unacknowledged QoS>0 messages in paho's hands; paho resends those itself after a reconnect.
So everything queued within the bound is delivered once the broker is back.

Availability: ``<prefix>/available`` (``<prefix>/nodes/<node_id>/available`` with an
``mqtt.node_id``: each node its own) is ``online``/``offline``, retained, with ``offline`` as the
last will; per-camera ``<prefix>/<camera>/status`` is retained too.
Both are republished on every (re)connect, since a restarted broker without
persistence forgets retained messages.

A gate (``set_gate``; streamclf/nodes.py sets one when several nodes share the prefix) may
withhold topics: a withheld message is not sent, a withheld retained state is still remembered,
and ``republish_retained`` sends it once allowed.

Failures are logged once per distinct cause with the broker's address: a connection that
fails before the broker answers (refused, unreachable, silent, a TLS mismatch), a message
paho refuses (it is dropped and counted; the sender goes on). The sender runs as a guarded
worker (``streamclf/workers.py``): if it dies anyway, the process reports itself unhealthy.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from streamclf.bounded_queue import BoundedQueue, OverflowPolicy
from streamclf.config import NODES_TOPIC_LEVEL, MqttConfig
from streamclf.throttle import LogThrottle
from streamclf.workers import Workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


MessageHandler = Callable[[str, bytes], None]
TopicGate = Callable[[str], bool]  # may this topic be sent now?


class MqttClient:
    """The daemon's one MQTT connection: publish, subscribe, availability, bounded outage queue."""

    inflight_window = 64

    def __init__(self, cfg: MqttConfig, workers: Workers | None = None):
        self.cfg = cfg
        self.workers = workers if workers is not None else Workers()
        self.prefix = cfg.topic_prefix
        self.node_id = cfg.node_id
        self.availability_topic = self.node_topic("available")
        # One lock for the queue and the connection state: the sender waits on both at once.
        self._cond = threading.Condition()
        self._queue: BoundedQueue[OutgoingMessage] = BoundedQueue(
            cfg.max_queued_messages, OverflowPolicy.DROP_OLDEST, cond=self._cond, logger=log,
            warning="MQTT queue full (%(maxsize)d messages, broker %(context)s); dropping the oldest, "
                    "%(dropped)d dropped so far",
        )
        self._connected = False
        self._stopping = False
        self._inflight: list[mqtt.MQTTMessageInfo] = []  # QoS>0 handed to paho, maybe not yet acknowledged
        self._retained_state: dict[str, OutgoingMessage] = {}  # republished on every connect
        self._subscriptions: dict[str, tuple[MessageHandler, bool]] = {}  # filter -> (handler, retained only)
        self._gate: TopicGate | None = None
        self.withheld = 0  # messages the gate did not let through, since start
        self.dropped_by_topic: Counter[str] = Counter()  # what the overflow cost, so the log can say
        self.published = 0
        self.connects = 0
        self.refused = 0  # CONNACKs that refused us (bad credentials, not authorised)
        self.connect_failures = 0  # attempts that failed before the broker answered, since start
        self.invalid_messages = 0  # messages paho refused (e.g. a topic over MQTT's limits), dropped
        self.last_error = ""
        self._failures_since_connect = 0
        self._last_cause = ""  # the connection failure last logged; each distinct one is logged once
        self._throttle = LogThrottle(log, limit=5, per_s=60.0)
        self._setup_error = ""  # why the client cannot connect at all (TLS files unusable); never connects then
        self._socket_error = ""  # paho's last socket error: the cause of a connection it then reports as lost
        self._refused_last = False  # the last CONNACK refused us (logged by _on_connect, not again as a failure)

        self.client = self._new_client(cfg)
        self._sender = self.workers.thread(self._send_loop, "mqtt-sender")

    def _new_client(self, cfg: MqttConfig) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.effective_client_id, protocol=mqtt.MQTTv311)
        client.suppress_exceptions = True  # an exception in one of our callbacks must not end paho's thread
        client.on_log = self._on_paho_log
        self._setup_error = ""
        if cfg.tls_enabled:
            try:
                # No CA file: paho loads the system's trusted CAs. The key's content stays inside ssl.
                client.tls_set(ca_certs=cfg.tls_ca_certs, certfile=cfg.tls_client_cert, keyfile=cfg.tls_client_key)
                client.tls_insecure_set(cfg.tls_insecure)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                # Never fall back to plaintext: stay unconnected, and say why.
                self._setup_error = self.last_error = f"TLS set-up failed: {_describe(exc)}"
                log.error("MQTT broker %s:%d: %s; check mqtt.tls_*; not connecting",
                          cfg.host, cfg.port, self._setup_error)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.resolve_password())
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(self.inflight_window)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        for topic_filter, (handler, retained_only) in self._subscriptions.items():
            client.message_callback_add(topic_filter, self._callback(handler, retained_only))
        return client

    def reconfigure(self, cfg: MqttConfig, flush_timeout_s: float = 1.0) -> None:
        """Reconnect with new settings (broker, credentials, client id, keepalive, QoS, queue bound).

        The queue, the retained state and the subscriptions stay, and so does every component
        holding this publisher. The availability topic goes ``offline`` on the old connection
        first. QoS>0 messages the old connection had not had acknowledged within
        ``flush_timeout_s`` seconds are lost (and logged). The topic prefix and node id cannot
        change here: too many topics and subscriptions are derived from them.
        """
        if cfg.topic_prefix != self.prefix or cfg.node_id != self.node_id:
            raise ValueError("mqtt.topic_prefix and mqtt.node_id cannot change while running")
        self.set_retained(self.availability_topic, "offline")
        self.flush(flush_timeout_s)
        old = self.client
        with self._cond:
            self._connected = False  # the sender waits until the new client connects
            self.cfg = cfg
            self._queue.maxsize = cfg.max_queued_messages
            self.client = self._new_client(cfg)
        old.disconnect()
        old.loop_stop()
        with self._cond:
            lost = self._unacked()
            self._inflight.clear()  # the old client will never complete these
        if lost:
            log.warning("MQTT: %d message(s) unacknowledged by the old connection are lost", lost)
        self.set_retained(self.availability_topic, "online")
        self._connect()

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def node_topic(self, *parts: str) -> str:
        """A topic of this daemon as a whole: ``<prefix>/<parts>``, or ``<prefix>/nodes/<node_id>/<parts>``
        with a node id, so that nodes sharing the prefix do not overwrite each other's."""
        return node_topic(self.prefix, self.node_id, *parts)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def dropped_overflow(self) -> int:
        """Messages dropped because the outage queue was full, since start."""
        return self._queue.dropped

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue) + self._unacked()

    def start(self) -> None:
        """Connect in the background; an unreachable broker is retried by paho with backoff."""
        self.set_retained(self.availability_topic, "online")
        self._sender.start()
        self._connect()

    def _connect(self) -> None:
        if self._setup_error:
            return
        self._failures_since_connect, self._last_cause = 0, ""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    # -- publishing -------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str | dict, qos: int = 0, retain: bool = False) -> None:
        """Queue a message. Dicts become JSON. Never blocks; overflow drops the oldest non-retained message.

        A retained message replaces a queued one of the same topic (only the newest state matters).
        """
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        if isinstance(payload, str):
            payload = payload.encode()
        msg = OutgoingMessage(topic, payload, qos, retain)
        if not self._allowed(topic):
            return
        with self._cond:
            # The broker's state goes into the overflow warning: a start-up burst while connected
            # must not hide an outage seconds later (see BoundedQueue).
            state = "connected" if self._connected else "disconnected"
            dropped = self._queue.put(msg, context=state, key=topic if retain else None)
            if dropped is not None:
                self.dropped_by_topic[dropped.topic] += 1

    def set_retained(self, topic: str, payload: str | bytes | dict, qos: int = 1) -> None:
        """Publish a retained state message and remember it, to republish after every reconnect."""
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        if isinstance(payload, str):
            payload = payload.encode()
        with self._cond:
            self._retained_state[topic] = OutgoingMessage(topic, payload, qos, True)
        self.publish(topic, payload, qos, retain=True)

    def clear_retained(self, topic: str) -> None:
        """Forget a retained state message and delete it from the broker (an empty retained payload)."""
        with self._cond:
            self._retained_state.pop(topic, None)
        self.publish(topic, b"", qos=1, retain=True)

    def set_gate(self, gate: TopicGate | None) -> None:
        """From now on send only messages whose topic ``gate(topic)`` allows (None: all)."""
        self._gate = gate

    def _allowed(self, topic: str) -> bool:
        gate = self._gate
        if gate is None or gate(topic):
            return True
        with self._cond:
            self.withheld += 1
        return False

    def republish_retained(self, which: TopicGate) -> None:
        """Send again the remembered retained states whose topic ``which`` selects (e.g. withheld until now)."""
        with self._cond:
            states = [msg for topic, msg in self._retained_state.items() if which(topic)]
        for msg in states:
            self.publish(msg.topic, msg.payload, msg.qos, retain=True)

    def subscribe(self, topic_filter: str, handler: MessageHandler, retained_only: bool = False) -> None:
        """Call ``handler(topic, payload)`` for messages on ``topic_filter`` (resubscribed on reconnect, in
        the order first subscribed). ``retained_only``: only the retained messages the broker hands over on
        subscribing, never one published while we are subscribed."""
        self._subscriptions[topic_filter] = (handler, retained_only)
        self.client.message_callback_add(topic_filter, self._callback(handler, retained_only))
        if self._connected:
            self.client.subscribe(topic_filter, qos=1)

    def _callback(self, handler: MessageHandler,
                  retained_only: bool) -> Callable[[mqtt.Client, object, mqtt.MQTTMessage], None]:
        """paho's per-filter callback for ``handler``."""
        def callback(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            # MQTT 3.1.1 sets the retain flag only on messages sent because of a new subscription.
            if message.retain or not retained_only:
                self._dispatch(handler, message)
        return callback

    def _dispatch(self, handler: MessageHandler, message: mqtt.MQTTMessage) -> None:
        try:
            handler(message.topic, bytes(message.payload))  # bytes already: no copy
        except Exception:  # one bad handler or payload must never take the connection down
            log.exception("MQTT handler for %s failed", message.topic)

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping and not self._queue
                    or (self._connected and self._queue and self._unacked() < self.inflight_window)
                )
                if self._stopping and not self._queue:
                    return
                msg = self._queue.popleft()
            if not self._allowed(msg.topic):  # the gate closed while it waited
                continue
            self._throttle.flush()  # sum up refused messages once their window has passed
            try:
                info = self.client.publish(msg.topic, msg.payload, msg.qos, msg.retain)
            except (ValueError, TypeError) as exc:  # this message is wrong (topic or payload over MQTT's limits)
                with self._cond:
                    self.invalid_messages += 1
                self._throttle.log("MQTT: cannot publish", logging.ERROR,
                                   "MQTT: cannot publish to %s: %s; message dropped (%d so far)",
                                   _brief_topic(msg.topic), exc, self.invalid_messages)
                continue
            # paho keeps QoS>0 messages it could not send (NO_CONN) and sends them after reconnecting.
            if info.rc == mqtt.MQTT_ERR_SUCCESS or (msg.qos > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN):
                with self._cond:
                    if msg.qos > 0:
                        self._inflight.append(info)
                    self.published += 1
            else:
                with self._cond:  # not handed over: put it back and wait for the connection
                    self._queue.put_front(msg, key=msg.topic if msg.retain else None)
                    self._connected = False if info.rc == mqtt.MQTT_ERR_NO_CONN else self._connected
                    self._cond.wait(0.1)

    # -- paho callbacks (network thread) ---------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            # Never treated as connected: nothing is sent, and paho retries with its backoff.
            self.last_error = f"broker refused the connection: {reason_code} (reason code {reason_code.value})"
            self.refused += 1
            self._refused_last = True
            log.error(
                "MQTT broker %s:%d refused the connection: %s (reason code %d); check mqtt.username/password "
                "and the broker's ACL; retrying with backoff",
                self.cfg.host, self.cfg.port, reason_code, reason_code.value,
            )
            return
        self.connects += 1
        failed = self._failures_since_connect
        self._failures_since_connect, self._last_cause, self._socket_error = 0, "", ""
        log.info("MQTT connected to %s:%d%s", self.cfg.host, self.cfg.port,
                 f" after {failed} failed attempt(s)" if failed else "")
        for topic_filter in self._subscriptions:
            client.subscribe(topic_filter, qos=1)
        with self._cond:
            # Retained state first, ahead of anything queued during the outage; a topic already
            # queued keeps its place and its (newer) value.
            for topic, msg in reversed(self._retained_state.items()):
                if self._gate is None or self._gate(topic):
                    self._queue.put_front(msg, key=topic)
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._stopping:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT disconnected from %s:%d (%s); reconnecting", self.cfg.host, self.cfg.port, reason_code)
        elif not was and not self._stopping and not self._refused_last:
            # Connected at the TCP (and TLS) level, but the broker never accepted the session.
            socket_error, self._socket_error = self._socket_error, ""
            if reason_code == "Keep alive timeout":
                cause = f"no answer to CONNECT within {self.cfg.keepalive_s} s (is this an MQTT broker?)"
            elif "certificate required" in socket_error:
                cause = "the broker requires a client certificate (set mqtt.tls_client_cert and mqtt.tls_client_key)"
            elif "bad certificate" in socket_error or "unknown ca" in socket_error:
                cause = f"the broker rejected our client certificate ({socket_error})"
            elif self.cfg.tls_enabled:
                cause = f"the broker closed the connection before accepting it ({socket_error or reason_code})"
            else:
                cause = (f"the broker closed the connection before accepting it ({reason_code}); "
                         "a TLS listener does this to a plaintext client: set mqtt.tls or mqtt.tls_ca_certs")
            self._connect_failed(cause)
        self._refused_last = False

    def _on_paho_log(self, client, userdata, level: int, buf: str) -> None:
        if level != mqtt.MQTT_LOG_ERR:
            return
        if buf.startswith("Caught exception"):  # in one of our callbacks; paho goes on (suppress_exceptions)
            log.error("MQTT: %s", buf)
        elif buf.startswith("failed to "):  # e.g. a TLS alert read after the handshake
            self._socket_error = buf

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this from inside its `except OSError:` around the connect, and passes no
        # error: the exception being handled is the cause.
        self._connect_failed(_connect_cause(sys.exc_info()[1], self.cfg.tls_enabled))

    def _connect_failed(self, cause: str) -> None:
        self.connect_failures += 1
        self._failures_since_connect += 1
        self.last_error = cause
        if cause != self._last_cause:
            self._last_cause = cause
            log.error("MQTT broker %s:%d: cannot connect: %s; retrying with backoff",
                      self.cfg.host, self.cfg.port, cause)

    def _unacked(self) -> int:
        """QoS>0 messages paho has not had acknowledged; call with ``_cond`` held."""
        # Not is_published(): it raises for messages that paho queued while disconnected (rc NO_CONN),
        # which paho still delivers after reconnecting and then marks as published.
        # paho has no public non-raising "acknowledged yet?", so this reads its private flag.
        self._inflight = [info for info in self._inflight if not info._published]  # noqa: SLF001
        return len(self._inflight)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        pass  # every subscription has its own callback

    # -- shutdown ---------------------------------------------------------------

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the queue to drain and QoS>0 messages to be acknowledged."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._unacked(), timeout_s)

    def stop(self, flush_timeout_s: float = 3.0) -> None:
        """Publish ``offline``, deliver what is queued for up to ``flush_timeout_s`` seconds, disconnect."""
        self.set_retained(self.availability_topic, "offline")
        flushed = self.flush(flush_timeout_s)
        if not flushed:
            log.warning("MQTT: %d message(s) not delivered at shutdown", self.queued)
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        self.client.disconnect()
        self.client.loop_stop()
        self._sender.join(1.0)


def node_topic(prefix: str, node_id: str | None, *parts: str) -> str:
    """``<prefix>/<parts>`` for the only daemon on a prefix, ``<prefix>/nodes/<node_id>/<parts>`` for a node."""
    return "/".join((prefix, NODES_TOPIC_LEVEL, node_id, *parts) if node_id else (prefix, *parts))


def _brief_topic(topic: str, limit: int = 120) -> str:
    return repr(topic) if len(topic) <= limit else f"{topic[:limit]!r}... ({len(topic)} characters)"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.library or 'SSL'} {exc.reason}"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _connect_cause(exc: BaseException | None, tls: bool) -> str:
    """What a failed connection attempt says to a person: the cause and, where it is likely, the fix."""
    if exc is None:
        return "the connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the broker's TLS certificate was not accepted: {exc.verify_message} "
                "(check mqtt.tls_ca_certs; mqtt.tls_insecure skips only the host name check)")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"):
            return f"TLS handshake failed ({reason}): the broker does not speak TLS on this port"
        if "CERTIFICATE_REQUIRED" in reason:
            return "the broker requires a client certificate (set mqtt.tls_client_cert and mqtt.tls_client_key)"
        if "BAD_CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
            return f"the broker rejected our client certificate ({reason})"
        if isinstance(exc, ssl.SSLEOFError):
            return "the broker closed the connection during the TLS handshake"
        return f"TLS handshake failed: {_describe(exc)}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running, and listening on this port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        what = "TLS handshake" if tls else "TCP connection"
        return f"no answer: the {what} timed out"
    if isinstance(exc, ConnectionResetError) and tls:
        return "the broker reset the connection during the TLS handshake (it probably does not speak TLS on this port)"
    return f"{type(exc).__name__}: {_describe(exc)}"
