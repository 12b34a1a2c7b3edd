"""``streamclf serve``: the model on NVIDIA Triton, through PyTriton, for every node of a site.

The image model is the local one (``ClipClassifier``: the same loading, precision, packed
tower and CUDA graphs as ``model.backend: local``), sized for ``serve.max_batch_size``; Triton's
dynamic batcher forms batches across every connected node (``preferred_batch_sizes``,
``max_queue_delay_us``). The three models and their tensors are ``protocol``'s.

PyTriton runs ``tritonserver`` (bundled in its wheel) as a child process whose Python backend
stub calls back into this process. That stub links ``libpython3.X.so``: when the interpreter
is not the system's (pyenv, a venv of another build), the system's library would be loaded
against this interpreter's standard library and the stub fails at start. So the interpreter's
own library directory goes first on ``LD_LIBRARY_PATH`` before Triton starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import sysconfig
import tempfile
import threading
from pathlib import Path

import numpy as np

from streamclf.config import ServeConfig, ServeSettings
from streamclf.remote import protocol as p

log = logging.getLogger(__name__)


def use_own_libpython(env: dict[str, str] | os._Environ = os.environ) -> None:
    """Put this interpreter's libpython directory first on ``LD_LIBRARY_PATH`` (see the module docstring)."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    version = sysconfig.get_config_var("LDVERSION") or ""
    if not libdir or not (Path(libdir) / f"libpython{version}.so").exists():
        return  # a static interpreter: the stub then finds the system's, as it would anyway
    paths = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    if not paths or paths[0] != libdir:
        env["LD_LIBRARY_PATH"] = ":".join([libdir, *[d for d in paths if d != libdir]])


def _grpc_tls(s: ServeSettings) -> dict:
    """TritonConfig's gRPC TLS settings. With TLS, Triton's HTTP endpoint listens on loopback only: it has
    no TLS of its own and would carry the same frames in the clear, and PyTriton itself manages the
    server through it."""
    if s.tls_cert is None:
        return {}
    tls = {"grpc_use_ssl": True, "grpc_server_cert": Path(s.tls_cert), "grpc_server_key": Path(s.tls_key or ""),
           "http_address": "127.0.0.1"}
    if s.tls_client_ca is not None:
        tls.update(grpc_use_ssl_mutual=True, grpc_root_cert=Path(s.tls_client_ca))
    return tls


def server_info(classifier, max_batch_size: int) -> p.ServerInfo:
    """What nodes need to know of ``classifier`` (a ``ClipClassifier``)."""
    dim = int(classifier.encode_prompts(["a"]).shape[-1])
    return p.ServerInfo(model=classifier.cfg.name, model_type=classifier.model_type,
                        score_kind=classifier.score_kind, logit_scale=classifier.logit_scale,
                        logit_bias=classifier.logit_bias, embedding_dim=dim, max_batch_size=max_batch_size,
                        preprocess=classifier.spec)


class ModelServer:
    """The three models bound to one Triton; ``start`` returns once Triton serves them."""

    def __init__(self, cfg: ServeConfig):
        from streamclf.model import ClipClassifier

        self.cfg = cfg
        settings = cfg.serve
        # The packed tower and the CUDA graphs are sized for the largest batch Triton will form.
        model_cfg = cfg.model.model_copy(update={"batch_size": settings.max_batch_size, "backend": "local"})
        self.classifier = ClipClassifier(model_cfg)
        self.info = server_info(self.classifier, settings.max_batch_size)
        self._info_json = self.info.to_json().encode()
        self._triton = None
        self._workspace = ""
        self.requests = {p.IMAGE: 0, p.TEXT: 0, p.INFO: 0}
        self._count_lock = threading.Lock()

    def _count(self, which: str) -> None:
        with self._count_lock:
            self.requests[which] += 1

    # The infer functions take and return what PyTriton's @batch hands over: numpy arrays, batch first.

    def _image(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self._count(p.IMAGE)
        return {p.EMBEDDINGS: self.classifier.embed_planar(pixels)}

    def _text(self, prompts: np.ndarray) -> dict[str, np.ndarray]:
        self._count(p.TEXT)
        texts = [bytes(b).decode("utf-8", errors="replace") for b in prompts.reshape(-1)]
        return {p.EMBEDDINGS: self.classifier.encode_prompts(texts).cpu().numpy()}

    def _info(self, protocol: np.ndarray) -> dict[str, np.ndarray]:
        self._count(p.INFO)
        return {p.INFO_OUTPUT: np.array([[self._info_json]] * len(protocol), dtype=np.object_)}

    def start(self) -> None:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        s = self.cfg.serve
        use_own_libpython()
        # PyTriton's default workspace is under ~/.cache, which a systemd service may not write to (ProtectHome).
        # It copies tritonserver there and runs it from the copy, so not under /run, which distributions
        # mount noexec: systemd's CacheDirectory (/var/cache/...) when there is one, else the temporary directory.
        cache = os.environ.get("CACHE_DIRECTORY", "").split(":")[0] or None
        self._workspace = tempfile.mkdtemp(prefix="streamclf-serve-", dir=cache)
        settings = {"grpc_address": s.address, "grpc_port": s.grpc_port, "http_address": s.address,
                    "http_port": s.http_port, "metrics_address": s.address, "metrics_port": s.metrics_port,
                    "exit_on_error": True}
        config = TritonConfig(**{**settings, **_grpc_tls(s)})
        triton = Triton(config=config, workspace=Path(self._workspace) / "pytriton")
        spec, dim, prefix = self.info.preprocess, self.info.embedding_dim, self.cfg.model.triton.model_prefix
        batcher = DynamicBatcher(max_queue_delay_microseconds=s.max_queue_delay_us,
                                 preferred_batch_size=list(s.preferred_batch_sizes) or None)
        triton.bind(
            model_name=p.model_name(prefix, p.IMAGE), infer_func=[batch(self._image)] * s.instances,
            inputs=[Tensor(name=p.PIXELS, dtype=np.uint8, shape=(3, spec.crop_height, spec.crop_width))],
            outputs=[Tensor(name=p.EMBEDDINGS, dtype=np.float32, shape=(dim,))],
            config=ModelConfig(max_batch_size=s.max_batch_size, batcher=batcher), strict=True)
        triton.bind(
            model_name=p.model_name(prefix, p.TEXT), infer_func=batch(self._text),
            inputs=[Tensor(name=p.PROMPTS, dtype=bytes, shape=(1,))],
            outputs=[Tensor(name=p.EMBEDDINGS, dtype=np.float32, shape=(dim,))],
            config=ModelConfig(max_batch_size=s.max_batch_size), strict=True)
        triton.bind(
            model_name=p.model_name(prefix, p.INFO), infer_func=batch(self._info),
            inputs=[Tensor(name=p.PROTOCOL_INPUT, dtype=bytes, shape=(1,))],
            outputs=[Tensor(name=p.INFO_OUTPUT, dtype=bytes, shape=(1,))],
            config=ModelConfig(max_batch_size=8), strict=True)
        triton.run()
        self._triton = triton
        log.info("serving %s (%s, %d dims) on Triton: gRPC %s:%d, HTTP %d, metrics %d; models %s_image, %s_text, "
                 "%s_info; up to %d frames per batch, queue delay %d us, %d instance(s)",
                 self.info.model, self.info.model_type, dim, s.address, s.grpc_port, s.http_port, s.metrics_port,
                 prefix, prefix, prefix, s.max_batch_size, s.max_queue_delay_us, s.instances)

    def request_counts(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.requests)

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None
        if self._workspace:
            shutil.rmtree(self._workspace, ignore_errors=True)


def run_server(cfg: ServeConfig, stop: threading.Event) -> int:
    """``streamclf serve``: start, tell systemd, serve until ``stop``; exit code (3 if Triton died)."""
    from streamclf.service.notify import SystemdNotifier

    notifier = SystemdNotifier()
    server = ModelServer(cfg)
    server.start()
    notifier.ready(f"serving {server.info.model} on gRPC port {cfg.serve.grpc_port}")
    rc = 0
    try:
        interval = notifier.watchdog_interval_s or 5.0
        while not stop.wait(min(interval, 5.0)):
            if not server.is_alive():
                log.error("tritonserver has stopped; exiting so that systemd restarts it")
                rc = 3
                break
            notifier.watchdog()
            counts = server.request_counts()
            notifier.status(f"serving {server.info.model}: {counts[p.IMAGE]} image and {counts[p.TEXT]} text "
                            "requests so far")
    finally:
        notifier.stopping()
        server.stop()
        notifier.close()
    return rc
