"""Shared fixtures: a tiny real CLIP on disk, a real mosquitto, a daemon launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.servers import MosquittoBroker, MqttCollector, have_rtsp
from tests.tiny_clip import build_tiny_clip

REPO = Path(__file__).resolve().parent.parent

# The device the daemon tests run the model on: the CPU, as in CI; scripts/gpu_check.sh runs the
# end-to-end tests again with STREAMCLF_TEST_DEVICE=cuda on a lent GPU.
TEST_DEVICE = os.environ.get("STREAMCLF_TEST_DEVICE", "cpu")

needs_rtsp = pytest.mark.skipif(
    not have_rtsp(),
    reason="needs /usr/bin/python3 with gi + GstRtspServer (scripts/test.sh installs them with apt)",
)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random-weight CLIP saved with save_pretrained, loaded like a hub model."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def broker():
    """One real mosquitto for the session; tests that kill a broker start their own."""
    b = MosquittoBroker().start()
    yield b
    b.close()


@pytest.fixture
def prefix() -> str:
    """A unique topic prefix per test, so retained messages never leak between tests."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def collector(broker, prefix):
    c = MqttCollector(broker.host, broker.port, f"{prefix}/#")
    yield c
    c.close()


def daemon_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp|analyzeduration;100000",
    )
    env.update(extra)
    return env


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def base_config(model_dir: Path, broker, prefix: str, cameras: dict, labels: dict | None = None, **sections) -> dict:
    """A config dict for the tiny model and the test broker; ``sections`` override/add top-level keys."""
    cfg = {
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": prefix, "qos": 1},
        "model": {"name": str(model_dir), "device": TEST_DEVICE, "precision": "fp32", "batch_size": 4,
                  "max_batch_wait_ms": 20},
        "labels": labels
        or {
            "red_thing": {"prompts": ["a red object"], "threshold": 0.0},
            "blue_thing": {"prompts": ["a blue object"], "threshold": 0.0},
            "nothing": {"prompts": ["an empty scene"], "background": True},
        },
        "cameras": cameras,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class Daemon:
    """``python -m streamclf run`` (or another ``module`` with the same command line) as a subprocess,
    with its output captured to a file."""

    def __init__(self, config_path: Path, log_path: Path, env: dict | None = None, args: tuple = (),
                 module: str = "streamclf"):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "run", "-c", str(config_path), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env or daemon_env(), cwd=str(REPO),
        )

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout}s; output:\n{self.output[-4000:]}") from None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture
def start_daemon(tmp_path):
    """start_daemon(cfg_dict, env=None, args=(), module="streamclf") -> Daemon; every daemon is killed at
    test end. ``module``: e.g. ``tests.stalling_daemon``, the daemon with a fault injected."""
    started: list[Daemon] = []

    def start(cfg: dict, env: dict | None = None, args: tuple = (), module: str = "streamclf") -> Daemon:
        n = len(started)
        path = write_config(tmp_path / f"config{n}.yaml", cfg)
        d = Daemon(path, tmp_path / f"daemon{n}.log", env, args, module)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate()`` every ``interval`` seconds until it is truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
