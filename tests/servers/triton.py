"""``streamclf serve`` (the model on a real Triton, through PyTriton) as a subprocess, for node tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.servers import _wait_bindable, free_port

REPO = Path(__file__).resolve().parent.parent.parent


class TritonServe:
    """``python -m streamclf serve`` on free ports; ``start``/``kill``/``restart`` keep the same ports."""

    def __init__(self, model_dir: Path, work: Path, model: dict | None = None, tls=None, **serve: object):
        """``model``: keys of the config's model section over the tests' (CPU, fp32); ``serve``: its serve section's.
        ``tls``: a ``tests.servers.tls.TlsFiles``: gRPC over TLS, and clients must show a certificate it signed."""
        self.work = work
        self.tls = tls
        if tls is not None:
            serve = {"tls_cert": str(tls.server_cert), "tls_key": str(tls.server_key),
                     "tls_client_ca": str(tls.ca), **serve}
        work.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        cfg = {
            "model": {"name": str(model_dir), "device": "cpu", "precision": "fp32", **(model or {})},
            "serve": {"address": "127.0.0.1", "grpc_port": self.grpc_port, "http_port": self.http_port,
                      "metrics_port": self.metrics_port, "max_batch_size": 8, "max_queue_delay_us": 1000, **serve},
        }
        self.config = work / "serve.yaml"
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.work / f"serve{self.starts}.log"

    def start(self, timeout: float = 120.0) -> "TritonServe":
        for port in (self.grpc_port, self.http_port, self.metrics_port):
            _wait_bindable("127.0.0.1", port, timeout=30)
        self.starts += 1
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        # Own process group: tritonserver and its Python stub go with it when the test kills the server.
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamclf", "serve", "-c", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(REPO), start_new_session=True)
        try:
            self.wait_ready(timeout)
        except AssertionError:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"streamclf serve exited {self.proc.returncode}:\n{self.output[-4000:]}")
            try:
                with self.client() as c:
                    if c.is_server_ready(client_timeout=2) and c.is_model_ready("streamclf_info", client_timeout=2):
                        return
            except Exception:  # not up yet
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"streamclf serve not ready after {timeout}s:\n{self.output[-4000:]}")
            time.sleep(0.3)

    def client(self):
        """A Triton gRPC client of this server (with the test CA and client certificate under TLS)."""
        import tritonclient.grpc as grpcclient

        if self.tls is None:
            return grpcclient.InferenceServerClient(self.url)
        return grpcclient.InferenceServerClient(self.url, ssl=True, root_certificates=str(self.tls.ca),
                                                private_key=str(self.tls.client_key),
                                                certificate_chain=str(self.tls.client_cert))

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: the server vanishes as a crashed machine's would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as systemd stops it; the exit code."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of tritonserver is left
            except ProcessLookupError:
                pass
            self.proc = None
            self._close_log()
        return rc
