"""``TritonClassifier``: a node's model on a Triton server, over gRPC (KServe v2 / Open Inference Protocol).

The node resizes and crops each frame on its capture thread (``pixels``), sends batches of uint8
pixels to ``<prefix>_image`` and scores the embeddings that come back against label embeddings
that ``<prefix>_text`` made (``streamclf.scoring``). Needs ``tritonclient[grpc]`` and numpy only.

The connection's one rule, in ``_Connection``: while it is down, every call raises
``InferenceUnavailable`` at once (the pipeline drops those frames with their own reason), and
a new attempt is made only when the backoff has passed: 1 s, doubling up to
``model.triton.retry_max_s``. A request that fails or outlasts ``timeout_s`` takes the
connection down. On each connection the server's models are checked against what this node
sends and expects (``_check_server``): other shapes, dtypes or embedding sizes are a
``ProtocolError`` naming both, and so is a server that comes back with another model than
the one the labels were encoded with.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from streamclf.backend import BackendStatus, InferenceUnavailable, ModelLoadError
from streamclf.config import LabelExamples, ModelConfig, TritonClientConfig
from streamclf.remote import protocol as p
from streamclf.remote.pixels import prepare_frame
from streamclf.scoring import LabelSet, ScoreRule, example_mean, label_embeddings

log = logging.getLogger(__name__)


def _brief(exc: BaseException) -> str:
    """One line of a gRPC error: Triton's messages carry the whole status and debug string."""
    if isinstance(exc, InferenceServerException):
        status = exc.status() or ""
        text = (exc.message() or str(exc)).strip().splitlines()[0][:300]
        return f"{status.removeprefix('StatusCode.')}: {text}" if status else text
    return f"{type(exc).__name__}: {str(exc).strip()[:300]}"


class _Connection:
    """The gRPC client, whether it is up, and when to try again; the one owner of those facts."""

    def __init__(self, cfg: TritonClientConfig, check: Callable[[Any], p.ServerInfo]):
        self.cfg = cfg
        self.url = cfg.url
        self.retry_max_s = cfg.retry_max_s
        self._check = check  # connects' check of the server's models -> its ServerInfo
        self._lock = threading.Lock()
        self._client: Any = None
        self._info: p.ServerInfo | None = None
        self._next_attempt = 0.0
        self._backoff_s = 1.0
        self.connects = 0
        self.failed_requests = 0
        self.last_error = "not connected yet"
        self.refused = ""  # why the last server reached was refused (ProtocolError); "" when it was not

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _new_client(self) -> Any:
        """A gRPC client of the server: over TLS when model.triton says so (grpc checks the server's name)."""
        cfg = self.cfg
        if not cfg.tls_enabled:
            return grpcclient.InferenceServerClient(cfg.url)
        return grpcclient.InferenceServerClient(cfg.url, ssl=True, root_certificates=cfg.tls_ca_certs,
                                                private_key=cfg.tls_client_key, certificate_chain=cfg.tls_client_cert)

    def client(self) -> tuple[Any, p.ServerInfo]:
        """The connected client and its server's info; connects first when the backoff allows.

        Raises InferenceUnavailable while the server cannot be reached, ProtocolError when it
        serves other models than this node expects.
        """
        with self._lock:
            if self._client is not None and self._info is not None:
                return self._client, self._info
            now = time.monotonic()
            if now < self._next_attempt:
                raise InferenceUnavailable(f"Triton server {self.url}: {self.last_error} "
                                           f"(next attempt in {self._next_attempt - now:.0f} s)")
            try:
                client = self._new_client()
            except OSError as exc:  # a TLS file unreadable since the config was checked
                self.last_error = f"cannot read a TLS file: {exc.strerror or exc}"
                raise InferenceUnavailable(f"Triton server {self.url}: {self.last_error}") from None
            try:
                info = self._check(client)
            except (InferenceServerException, OSError) as exc:
                self._down(_brief(exc), client)
                raise InferenceUnavailable(f"Triton server {self.url}: {self.last_error}") from None
            except p.ProtocolError as exc:
                # Not fatal mid-run either: an operator may put the right model back; frames drop meanwhile.
                self.refused = str(exc)
                self._down(self.refused, client)
                raise InferenceUnavailable(f"Triton server {self.url}: {exc}") from None
            self.refused = ""
            self._client, self._info = client, info
            self._backoff_s = 1.0
            self.connects += 1
            if self.connects > 1:
                log.info("Triton server %s: connected again", self.url)
            self.last_error = ""
            return client, info

    def failed(self, client: Any, exc: BaseException) -> InferenceUnavailable:
        """A request on ``client`` failed: the connection is down; the error to raise."""
        with self._lock:
            self.failed_requests += 1
            if self._client is client:
                self._client = None
                self._down(_brief(exc), client, first_retry_now=True)
        return InferenceUnavailable(f"Triton server {self.url}: {self.last_error}")

    def _down(self, why: str, client: Any, first_retry_now: bool = False) -> None:
        """Called with the lock held. The first failure of a working connection retries at once."""
        if why != self.last_error:
            log.warning("Triton server %s: %s; frames are dropped (inference_unavailable) until it answers",
                        self.url, why)
        self.last_error = why
        wait = 0.0 if first_retry_now else self._backoff_s
        self._next_attempt = time.monotonic() + wait
        if not first_retry_now:
            self._backoff_s = min(self._backoff_s * 2, self.retry_max_s)
        try:
            client.close()
        except Exception:  # closing a broken channel may fail too; it is gone either way
            pass


class TritonClassifier:
    """The classifier of a node whose model runs on a Triton server (``model.backend: triton``)."""

    precision = "remote"

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.device = f"triton {cfg.triton.url}"
        self._names = {w: p.model_name(cfg.triton.model_prefix, w) for w in (p.IMAGE, p.TEXT, p.INFO)}
        self._first_info: p.ServerInfo | None = None
        self._conn = _Connection(cfg.triton, self._check_server)
        self._prepare: Callable[[np.ndarray], np.ndarray] | None = None
        self.score_rule: ScoreRule | None = None
        try:
            self._conn.client()
        except InferenceUnavailable as exc:
            if self._conn.refused:  # a server that answers with the wrong model is a setup error: say so now
                raise ModelLoadError(self._conn.refused) from None
            # Not fatal: the cameras start, their frames are dropped and counted until the server answers.
            log.warning("%s; starting anyway: each batch retries when the backoff allows", exc)

    # -- the server's models, checked -----------------------------------------------------

    def _check_server(self, client: Any) -> p.ServerInfo:
        """The server's ServerInfo, once its image and text models are seen to be what this node needs.

        The three requests share one ``timeout_s``: a slow server must not hold a batch (and the
        connection's lock) three times as long as one request may take.
        """
        deadline = time.monotonic() + self.cfg.triton.timeout_s

        def left() -> float:
            return max(0.05, deadline - time.monotonic())

        try:
            info = p.ServerInfo.from_json(self._infer_info(client, left()))
            image = self._metadata(client, p.IMAGE, left())
            text = self._metadata(client, p.TEXT, left())
            spec = info.preprocess
            _expect(image, "inputs", p.PIXELS, "UINT8", [-1, 3, spec.crop_height, spec.crop_width],
                    self._names[p.IMAGE])
            _expect(image, "outputs", p.EMBEDDINGS, "FP32", [-1, info.embedding_dim], self._names[p.IMAGE])
            _expect(text, "inputs", p.PROMPTS, "BYTES", [-1, 1], self._names[p.TEXT])
            _expect(text, "outputs", p.EMBEDDINGS, "FP32", [-1, info.embedding_dim], self._names[p.TEXT])
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            # An answer of another form (no info output, metadata without a field): the server's models are
            # not this protocol's, which is a ProtocolError, never an exception into the caller's thread.
            raise p.ProtocolError(f"the server's models {', '.join(self._names.values())} answered in a form this "
                                  f"node cannot read ({type(exc).__name__}: {exc})") from None
        if self.cfg.score not in ("auto", info.score_kind):
            raise p.ProtocolError(f"model.score is {self.cfg.score}, but the server's model {info.model} is a "
                                  f"{info.model_type} model, whose scores are a {info.score_kind}: set model.score: "
                                  f"{info.score_kind} or auto")
        first = self._first_info
        if first is not None and first != info:
            raise p.ProtocolError(f"the server at {self.cfg.triton.url} now serves {info.model} ({info.model_type}, "
                                  f"{info.embedding_dim} dims), but this node's labels were encoded by {first.model} "
                                  f"({first.model_type}, {first.embedding_dim} dims): restart the node")
        if first is None:
            self._adopt(info)
        return info

    def _infer_info(self, client: Any, timeout: float) -> bytes:
        request = grpcclient.InferInput(p.PROTOCOL_INPUT, [1, 1], "BYTES")
        request.set_data_from_numpy(np.array([[p.PROTOCOL.encode()]], dtype=np.object_))
        try:
            result = client.infer(self._names[p.INFO], [request], client_timeout=timeout)
        except InferenceServerException as exc:
            raise self._unknown_model(client, p.INFO, exc) from None
        return result.as_numpy(p.INFO_OUTPUT).reshape(-1)[0]

    def _metadata(self, client: Any, which: str, timeout: float) -> dict:
        try:
            return client.get_model_metadata(self._names[which], as_json=True, client_timeout=timeout)
        except InferenceServerException as exc:
            raise self._unknown_model(client, which, exc) from None

    def _unknown_model(self, client: Any, which: str, exc: InferenceServerException) -> Exception:
        """A server that answers but has no such model is set up for other nodes (model.triton.model_prefix)
        or serves something else: a ProtocolError naming what it has. Anything else stays as it was."""
        text = f"{exc.status() or ''} {exc.message() or ''}".lower()
        if "not_found" not in text and "unknown model" not in text and "not found" not in text:
            return exc
        try:  # PyTriton keeps this list from clients; a stock Triton gives it
            index = client.get_model_repository_index(as_json=True, client_timeout=2)
            have = "its models: " + (", ".join(sorted(m["name"] for m in index.get("models", []) if "name" in m))
                                     or "none")
        except Exception:  # the list only makes the message better
            have = "it does not list its models to clients"
        return p.ProtocolError(f"the Triton server at {self.cfg.triton.url} has no model {self._names[which]} "
                               f"(model.triton.model_prefix is {self.cfg.triton.model_prefix!r}; {have})")

    def _adopt(self, info: p.ServerInfo) -> None:
        self._first_info = info
        self.score_rule = ScoreRule(info.score_kind, info.logit_scale, info.logit_bias)
        self._prepare = prepare_frame(info.preprocess, bgr=True)
        log.info("model %s on the Triton server %s: %s, %d dims, input %dx%d, up to %d frames per request",
                 info.model, self.cfg.triton.url, info.model_type, info.embedding_dim,
                 info.preprocess.crop_width, info.preprocess.crop_height, info.max_batch_size)

    # -- the classifier ---------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The server's model, once it has answered."""
        first = self._first_info
        return first.model if first is not None else f"(the model of {self.cfg.triton.url})"

    def backend_status(self) -> BackendStatus:
        conn = self._conn
        return BackendStatus("triton", conn.url, conn.connected, conn.last_error, max(0, conn.connects - 1),
                             conn.failed_requests)

    @property
    def prepare_image(self) -> Callable[[np.ndarray], Any] | None:
        """Resize and crop on the capture thread, once the server said how; until then, in the batch."""
        return self._prepare_or_none

    def _prepare_or_none(self, image: np.ndarray) -> np.ndarray | None:
        prepare = self._prepare
        return prepare(image) if prepare is not None else None

    def reserve_model_thread(self) -> None:
        """Nothing to reserve: no torch in this process."""

    def become_model_thread(self) -> None:
        """Nothing to pin: no torch in this process."""

    def _infer(self, which: str, name: str, array: np.ndarray, datatype: str) -> np.ndarray:
        """``array``'s (N, dim) embeddings; InferenceUnavailable whatever went wrong with the request."""
        client, info = self._conn.client()
        request = grpcclient.InferInput(name, list(array.shape), datatype)
        request.set_data_from_numpy(array)
        try:
            result = client.infer(self._names[which], [request], client_timeout=self.cfg.triton.timeout_s)
        # Not only InferenceServerException: gRPC raises ValueError on a channel another thread's failed
        # request closed meanwhile. Nothing of a request may reach the pipeline's threads but InferenceUnavailable.
        except Exception as exc:
            raise self._conn.failed(client, exc) from None
        out = result.as_numpy(p.EMBEDDINGS)
        want = (len(array), info.embedding_dim)
        if out is None or out.shape != want:
            # A server that answers other than it declared (a stock Triton does not check a Python model's
            # outputs): scored, it would fail on the inference thread.
            got = "no embeddings" if out is None else f"embeddings of shape {out.shape}"
            raise self._conn.failed(client, p.ProtocolError(f"{self._names[which]} answered {got} for a request "
                                                            f"that needs {want}")) from None
        return out

    def encode_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """L2-normalised fp32 text embeddings (N, dim) of ``prompts``, from the server's text model."""
        _, info = self._conn.client()
        rows = []
        for i in range(0, len(prompts), info.max_batch_size):
            chunk = np.array([[s.encode("utf-8")] for s in prompts[i : i + info.max_batch_size]], dtype=np.object_)
            rows.append(self._infer(p.TEXT, p.PROMPTS, chunk, "BYTES"))
        return np.concatenate(rows).astype(np.float32, copy=False)

    def encode_labels(self, prompts: Mapping[str, Sequence[str]],
                      examples: Mapping[str, LabelExamples] | None = None) -> LabelSet:
        """Each label's embedding, as the local model makes it (``streamclf.model.classifier``), on the server."""
        text = self.encode_prompts([q for n in prompts for q in prompts[n]])
        return LabelSet(tuple(prompts), label_embeddings(prompts, text, examples or {}, self._example_mean))

    def _example_mean(self, paths: Sequence) -> np.ndarray:
        return example_mean(paths, self.cfg.batch_size, lambda images: self.embed_images(images, bgr=True))

    def embed_images(self, images: Sequence[np.ndarray], bgr: bool = False,
                     prepared: Sequence[Any] | None = None) -> np.ndarray:
        """L2-normalised fp32 image embeddings (N, dim) of (H, W, 3) uint8 images (BGR with ``bgr=True``)."""
        _, info = self._conn.client()
        pixels = np.empty((len(images), 3, info.preprocess.crop_height, info.preprocess.crop_width), np.uint8)
        prepare = prepare_frame(info.preprocess, bgr=bgr) if not bgr or self._prepare is None else self._prepare
        for i, image in enumerate(images):
            ready = prepared[i] if prepared is not None else None
            pixels[i] = ready if ready is not None else prepare(image)
        step = info.max_batch_size
        out = [self._infer(p.IMAGE, p.PIXELS, pixels[i : i + step], "UINT8") for i in range(0, len(pixels), step)]
        return np.concatenate(out) if len(out) > 1 else out[0]

    def score(self, embeddings: np.ndarray, labels: LabelSet,
              subsets: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        rule = self.score_rule
        assert rule is not None, "scores need a connection first: embed_images raises until there is one"
        return rule.scores(embeddings @ labels.embeddings.T, labels, subsets)


def _expect(metadata: dict, kind: str, name: str, datatype: str, shape: list[int], model: str) -> None:
    """Raise ProtocolError unless ``metadata`` (Triton's model metadata) has ``name`` with this dtype and shape."""
    tensors = {t["name"]: t for t in metadata.get(kind, [])}
    want = f"{name} {datatype} {shape}"
    if name not in tensors:
        have = ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in tensors.values()) or "none"
        raise p.ProtocolError(f"the server's model {model} has no {kind[:-1]} {name}: this node sends/expects "
                              f"{want}, the server has {have}")
    t = tensors[name]
    got_shape = [int(d) for d in t["shape"]]
    if t["datatype"] != datatype or len(got_shape) != len(shape) or any(
            w != -1 and g != w for g, w in zip(got_shape, shape, strict=True)):
        raise p.ProtocolError(f"the server's model {model} has {kind[:-1]} {name} {t['datatype']} {got_shape}, "
                              f"but this node sends/expects {want}")
