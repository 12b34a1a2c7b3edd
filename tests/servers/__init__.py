"""Real test servers for streamclf integration tests (no mocks).

- ``MosquittoBroker``: a real ``mosquitto`` process on 127.0.0.1 (start/stop/restart, same port),
  optionally a TLS listener (``tls=``, files from ``tests/servers/tls.py``).
- ``RtspServer``: ``tests/servers/rtsp_server.py`` (GstRtspServer) run by the *system* python.
- ``MqttCollector`` / ``read_retained``: paho-mqtt 2.x subscribers that record messages.
- ``make_video``: write a small synthetic video with cv2.VideoWriter.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
RTSP_SCRIPT = HERE / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


# --------------------------------------------------------------------------- ports
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_bindable(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until (host, port) can be bound with SO_REUSEADDR (as servers do)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"port {host}:{port} still in use after {timeout}s") from None
        time.sleep(0.05)


def _kill(proc: Optional[subprocess.Popen], hard: bool, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------- mosquitto
class MosquittoBroker:
    """A real mosquitto broker on 127.0.0.1.

    ``MosquittoBroker(port=None, username=None, password=None, tls=None, require_certificate=False)``;
    ``start()``, ``stop(hard=False)``, ``restart(hard=False, down_for=0.0)``; also a context manager.
    With ``tls`` (a ``tests.servers.tls.TlsFiles``) the listener speaks TLS only, with the server
    certificate; ``require_certificate`` makes it require a client certificate signed by the CA.
    """

    host = "127.0.0.1"

    def __init__(self, port: Optional[int] = None, username: Optional[str] = None,
                 password: Optional[str] = None, tls=None, require_certificate: bool = False):
        self._port = port or free_port()
        self.tls, self.require_certificate = tls, require_certificate
        self.username, self.password = username, password
        self._dir = Path(tempfile.mkdtemp(prefix="mosq-"))
        self._proc: Optional[subprocess.Popen] = None
        self._log = self._dir / "mosquitto.log"

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_conf(self) -> Path:
        lines = [f"listener {self._port} {self.host}", "persistence false",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}",
                      f"require_certificate {'true' if self.require_certificate else 'false'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and can't read our 0700 dir
        if self.username is not None:
            pw = self._dir / "passwd"
            pw.write_text("")
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), self.username, self.password or ""],
                           check=True, capture_output=True)
            pw.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        conf = self._dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        return conf

    def start(self, timeout: float = 10.0) -> "MosquittoBroker":
        if self.running:
            return self
        conf = self._write_conf()
        _wait_bindable(self.host, self._port, timeout)
        deadline = time.monotonic() + timeout
        while True:
            log = open(self._log, "ab")
            log_start = log.tell()
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL)
            log.close()
            while self._proc.poll() is None and time.monotonic() < deadline:
                if _port_accepts(self.host, self._port):
                    return self
                time.sleep(0.05)
            rc = self._proc.poll()
            log_tail = self._log_tail(log_start)
            if rc is None or time.monotonic() >= deadline or "in use" not in log_tail:
                _kill(self._proc, hard=True)
                self._proc = None
                raise RuntimeError(f"mosquitto (rc={rc}) did not listen on {self.host}:{self._port} "
                                   f"within {timeout}s; log:\n{log_tail}")
            time.sleep(0.1)  # 'Address already in use' race: retry until the deadline

    @property
    def log_text(self) -> str:
        """What mosquitto logged so far (errors, warnings, notices such as refused handshakes)."""
        try:
            return self._log.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, start: int = 0) -> str:
        try:
            return self._log.read_bytes()[start:][-2000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, hard: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``hard=True``) and wait for it to exit."""
        _kill(self._proc, hard)
        self._proc = None

    def restart(self, hard: bool = False, down_for: float = 0.0) -> "MosquittoBroker":
        """Stop, optionally stay down ``down_for`` seconds, start again on the SAME port."""
        self.stop(hard=hard)
        if down_for:
            time.sleep(down_for)
        return self.start()

    def close(self) -> None:
        self.stop(hard=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- RTSP
def have_rtsp() -> bool:
    """True if /usr/bin/python3 can import gi with Gst + GstRtspServer 1.0 and x264enc exists."""
    if not (os.path.exists(SYSTEM_PYTHON) and RTSP_SCRIPT.exists()):
        return False
    code = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
            "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
            "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('videotestsrc')")
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class RtspServer:
    """``tests/servers/rtsp_server.py`` as a subprocess.

    ``RtspServer(file=None, port=None, path="/cam", fps=15)`` (``file=None`` -> videotestsrc
    pattern 640x480); ``start()``, ``kill()`` (SIGKILL), ``restart(down_for=0.0)``, ``url``.
    """

    host = "127.0.0.1"

    def __init__(self, file: Optional[str | os.PathLike] = None, port: Optional[int] = None,
                 path: str = "/cam", fps: int = 15):
        self.file = str(file) if file is not None else None
        self._port = port or free_port()
        self.path = path if path.startswith("/") else "/" + path
        self.fps = fps
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._dir = Path(tempfile.mkdtemp(prefix="rtsp-"))
        self._stderr = self._dir / "stderr.log"

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self._port}{self.path}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stderr_text(self) -> str:
        try:
            return self._stderr.read_bytes()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 20.0) -> "RtspServer":
        if self.running:
            return self
        _wait_bindable(self.host, self._port, timeout)
        cmd = [SYSTEM_PYTHON, str(RTSP_SCRIPT), "--port", str(self._port), "--path", self.path,
               "--fps", str(self.fps)]
        cmd += ["--file", self.file] if self.file else ["--pattern"]
        with open(self._stderr, "wb") as err:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                          stdin=subprocess.DEVNULL)
        ready = threading.Event()

        def _read(out):
            with out:
                for line in out:  # drain stdout for the process' lifetime
                    if line.strip() == b"READY":
                        ready.set()

        self._reader = threading.Thread(target=_read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                rc = self._proc.poll()
                self.kill()
                raise RuntimeError(f"RTSP server not READY within {timeout}s (rc={rc}) "
                                   f"cmd={cmd}\nstderr:\n{self._stderr_text()}")
        return self

    def kill(self) -> None:
        """SIGKILL the server (simulates a camera dying) and wait for it."""
        _kill(self._proc, hard=True)
        self._proc = None
        if self._reader is not None:
            self._reader.join(5)  # EOF after the kill; it closes the pipe
            self._reader = None

    stop = kill

    def freeze(self) -> None:
        """SIGSTOP the server: its connections stay open but nothing more arrives (a hung camera)."""
        assert self._proc is not None, "the server is not running"
        os.kill(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server: it carries on where it stopped."""
        assert self._proc is not None, "the server is not running"
        os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self, down_for: float = 0.0) -> "RtspServer":
        self.kill()
        if down_for:
            time.sleep(down_for)
        return self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- MQTT
def _mqtt_client(client_id: str = "", username=None, password=None):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        c.username_pw_set(username, password)
    return c


class MqttCollector:
    """Subscribes to ``topic`` (default '#') and records ``(topic, payload_bytes, retain)``.

    Reconnects automatically (paho loop thread) and re-subscribes on every connect, so it
    keeps collecting across broker restarts.
    """

    def __init__(self, host: str, port: int, topic: str = "#", username: Optional[str] = None,
                 password: Optional[str] = None, timeout: float = 10.0, tls=None):
        """``tls``: a ``tests.servers.tls.TlsFiles`` to connect with TLS and its client certificate."""
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.topic = topic
        self._lock = threading.Lock()
        self._msgs: list[tuple[str, bytes, bool]] = []
        self._subscribed = threading.Event()
        self.connect_count = 0
        self.last_error: Optional[str] = None
        self._client = _mqtt_client(f"collector-{os.getpid()}-{id(self)}", username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(0.1, 1)
        if tls is not None:
            self._client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise AssertionError(f"MqttCollector: not subscribed to {topic!r} on {host}:{port} "
                                 f"within {timeout}s (last error: {self.last_error})")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.last_error = str(reason_code)
            return
        self.connect_count += 1
        self._subscribed.clear()
        client.subscribe(self.topic, qos=1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._subscribed.clear()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            self.last_error = f"subscribe failed: {reason_codes}"
            return
        self._subscribed.set()

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self._msgs.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Wait until (re)subscribed, e.g. after a broker restart."""
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"MqttCollector: not (re)subscribed within {timeout}s "
                                 f"(last error: {self.last_error})")

    @property
    def all(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self._msgs)

    def messages(self, topic_filter: str = "#") -> list[tuple[str, bytes, bool]]:
        match = self._mqtt.topic_matches_sub
        return [m for m in self.all if match(topic_filter, m[0])]

    def json_messages(self, topic_filter: str = "#") -> list:
        """Payloads of matching messages decoded as JSON (empty payloads are skipped)."""
        return [json.loads(p) for _, p, _ in self.messages(topic_filter) if p]

    def clear(self) -> None:
        with self._lock:
            self._msgs.clear()

    def wait_for(self, predicate: Callable[[list], bool], timeout: float = 10.0,
                 interval: float = 0.05) -> list:
        """Poll until ``predicate(messages)`` is truthy; return the messages or raise AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.all
            if predicate(msgs):
                return msgs
            if time.monotonic() > deadline:
                raise AssertionError(f"MqttCollector.wait_for timed out after {timeout}s; "
                                     f"{self.summary(msgs)}")
            time.sleep(interval)

    @staticmethod
    def summary(msgs: list, limit: int = 30) -> str:
        lines = [f"{len(msgs)} message(s) received:"]
        for t, p, r in msgs[-limit:]:
            lines.append(f"  {t} retain={r} {p[:200]!r}")
        return "\n".join(lines)

    def close(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_retained(host: str, port: int, topic: str, timeout: float = 3.0,
                  username: Optional[str] = None, password: Optional[str] = None) -> Optional[bytes]:
    """Connect fresh, subscribe to ``topic`` and return its retained payload (None if none)."""
    got: dict = {}
    done = threading.Event()
    subscribed = threading.Event()
    c = _mqtt_client(f"retained-{os.getpid()}-{time.monotonic_ns()}", username, password)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            got["error"] = str(reason_code)
            done.set()
        else:
            client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(client, userdata, msg):
        if msg.retain and msg.topic == topic:
            got["payload"] = bytes(msg.payload)
            done.set()

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(host, port, keepalive=30)
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        # retained messages are delivered right after SUBACK; give them a short grace period
        while not done.is_set() and time.monotonic() < deadline:
            if subscribed.wait(0.05):
                done.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                break
        if "error" in got:
            raise ConnectionError(f"read_retained: connect failed: {got['error']}")
        return got.get("payload")
    finally:
        c.disconnect()
        c.loop_stop()


# --------------------------------------------------------------------------- video
def gradient_frame(i: int, w: int, h: int) -> np.ndarray:
    """A BGR frame of gradients that move with ``i``: every frame differs (make_video's default)."""
    x = (np.arange(w, dtype=np.uint16)[None, :] + 8 * i) % 256
    y = (np.arange(h, dtype=np.uint16)[:, None] + 4 * i) % 256
    f = np.empty((h, w, 3), np.uint8)
    f[..., 0] = np.broadcast_to(x, (h, w))
    f[..., 1] = np.broadcast_to(y, (h, w))
    f[..., 2] = (37 * i) % 256
    return f


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of the video at ``path``, BGR, as the daemon's OpenCV decodes it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return frames
            frames.append(bgr)
    finally:
        cap.release()


def make_video(path: str | os.PathLike, frames: int, fps: int = 10, size: tuple[int, int] = (320, 240),
               color_fn: Optional[Callable[[int], np.ndarray]] = None) -> Path:
    """Write ``frames`` frames to ``path`` (.mp4 -> mp4v, .avi -> MJPG); returns the Path.

    ``size`` is (width, height); ``color_fn(i)`` returns a BGR uint8 frame (resized if needed).
    The file is read back with cv2.VideoCapture and the frame count is verified.
    """
    import cv2

    path = Path(path)
    w, h = size
    fourcc = {".mp4": "mp4v", ".avi": "MJPG"}.get(path.suffix.lower())
    if fourcc is None:
        raise ValueError(f"make_video: use .mp4 or .avi, not {path.suffix!r}")
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"cv2.VideoWriter could not open {path} ({fourcc})")
    try:
        for i in range(frames):
            f = color_fn(i) if color_fn else gradient_frame(i, w, h)
            f = np.ascontiguousarray(f, dtype=np.uint8)
            if f.shape[:2] != (h, w):
                f = cv2.resize(f, (w, h))
            vw.write(f)
    finally:
        vw.release()
    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.read()[0]:
            n += 1
    finally:
        cap.release()
    if n != frames:
        raise RuntimeError(f"make_video: {path} reads back {n} frames, expected {frames}")
    return path
