"""The CLIP model: loading, label text embeddings, and batched frame scoring.

A label's text embedding is the normalised mean of its prompts' normalised
embeddings, computed once when the labels are set, never per frame. A frame's score
for each of its camera's labels is softmax(logit_scale * cosine) over that camera's
labels, which with one prompt per label equals what
``transformers.pipeline("zero-shot-image-classification")`` returns with
``hypothesis_template="{}"``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import torch

from streamclf.model import torch_threads
from streamclf.config import ModelConfig
from streamclf.model.cuda_graphs import GraphedEncoder
from streamclf.model.image_tower import ImageTower, cpu_can_pack
from streamclf.model.preprocess import BatchPreprocessor, DeviceBatchPreprocessor, PreprocessSpec

log = logging.getLogger(__name__)

# Our towers and transformers' forward differ only by float rounding (same weights, same operations).
TOWER_MIN_COSINE = 0.9999
# int8's error depends on the weights' outliers, so each model is checked when it loads; below this
# (the bound tests/test_precision.py holds int8 to) the daemon warns that scores will shift.
INT8_MIN_COSINE = 0.995


class ModelLoadError(Exception):
    """The model weights could not be found or loaded; the message says where we looked and what to do."""


@dataclass(frozen=True)
class LabelSet:
    """Text embeddings of a set of labels, (n_labels, dim), L2-normalised, on the model's device."""

    names: tuple[str, ...]
    embeddings: torch.Tensor

    def index(self, names: Sequence[str]) -> list[int]:
        return [self.names.index(n) for n in names]


def resolve_device(requested: str) -> torch.device:
    """``auto`` means the first CUDA device when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {requested!r} but PyTorch sees no CUDA device (torch {torch.__version__})")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16 is fast."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32. int8 is opt-in (CPU only).

    Each of these keeps image embeddings within cosine 0.999 of fp32 (tests/test_precision.py);
    int8 (dynamic quantisation of the image tower's Linear layers) is faster on the CPU but its
    error depends on the weights' outliers, so it is never picked automatically.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if requested == "int8" and device.type != "cpu":
        raise ModelLoadError("model.precision int8 is only available on the CPU; use fp16 or bf16 on CUDA")
    return requested


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _load_error(name: str, cause: BaseException | str) -> ModelLoadError:
    from huggingface_hub import constants

    looked = []
    # "org/name" reads as a hub id; anything else with a path separator, or that exists, as a directory.
    if name.startswith((".", "~", "/")) or name.count("/") > 1 or Path(name).exists():
        looked.append(f"the local directory {os.path.abspath(name)} ({'exists' if Path(name).is_dir() else 'not found'})")
    looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE}")
    if constants.HF_HUB_OFFLINE:
        looked.append("not the hub: HF_HUB_OFFLINE is set")
    else:
        looked.append("the hub (unreachable from this machine)" if not _hub_reachable() else "the hub")
    return ModelLoadError(
        f"cannot load CLIP model {name!r}: {cause}\n"
        f"  looked in: " + "; ".join(looked) + "\n"
        "  fix: on a machine with network, download it once:\n"
        f"    python -c \"from huggingface_hub import snapshot_download; snapshot_download('{name}', "
        f"local_dir='clip-model', allow_patterns=['*.json', '*.txt', '*.safetensors'])\"\n"
        "  then copy the clip-model directory here and set model.name in the config to its path\n"
        "  (or set HF_HOME to a Hugging Face cache that already holds the model)."
    )


def _load_pretrained(name: str):
    """Load model, tokenizer and preprocessing spec from a local directory, the cache, or the hub."""
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils import cached_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one log line says the model loaded; no progress bars in service logs

    local_dir = Path(name).expanduser()
    is_local = local_dir.is_dir()
    # A hub id is "org/name"; anything that can only be a path and is missing is a plain error.
    if not is_local and (name.startswith((".", "~", "/")) or name.count("/") > 1):
        raise _load_error(name, "no such directory")
    # Cache first: a machine that has the weights must not stall on an unreachable hub.
    attempts = [True] if is_local else [True, False]
    last: BaseException | None = None
    for local_only in attempts:
        if not local_only and (_offline() or not _hub_reachable()):
            break
        try:
            model = CLIPModel.from_pretrained(str(local_dir) if is_local else name, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(str(local_dir) if is_local else name, local_files_only=local_only)
            spec = PreprocessSpec()
            proc_path = cached_file(
                str(local_dir) if is_local else name,
                "preprocessor_config.json",
                local_files_only=local_only,
                _raise_exceptions_for_missing_entries=False,
            )
            if proc_path:
                import json

                with open(proc_path, encoding="utf-8") as f:
                    spec = PreprocessSpec.from_processor_dict(json.load(f))
            else:
                log.warning("model %s has no preprocessor_config.json; using CLIP's defaults %s", name, spec)
            return model, tokenizer, spec
        except (OSError, ValueError) as exc:
            last = exc
    raise _load_error(name, _short(last) if last else "not in the cache and the hub is unreachable")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _TransformersImageTower(torch.nn.Module):
    """transformers' own image forward: the fallback for checkpoints ImageTower does not recognise."""

    def __init__(self, vision_model: torch.nn.Module, visual_projection: torch.nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.projection = visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(self.vision_model(pixel_values=pixel_values).pooler_output)


def _image_tower(model) -> torch.nn.Module:
    """The pooled-embedding tower (see image_tower.py), or transformers' forward if the layout is unusual
    or the tower computes something else on this device.

    Both embed one random image at load, in fp32 on the model's device: the tower is our own
    rearrangement of CLIP's forward, and a device or torch build it was never run on must not
    score frames with it unchecked. The transformers vision model is released afterwards: the
    tower holds every weight it needs.
    """
    reference = _TransformersImageTower(model.vision_model, model.visual_projection)
    try:
        tower = ImageTower(model.vision_model, model.visual_projection)
    except (ValueError, AttributeError, TypeError) as exc:
        log.warning("image tower: using transformers' forward (%s)", exc)
        return reference
    pixels = torch.randn(1, tower.channels, tower.image_size, tower.image_size,
                         generator=torch.Generator().manual_seed(0)).to(next(tower.parameters()).device)
    try:
        cosine = _cosine(tower, reference, pixels)
    except (RuntimeError, NotImplementedError) as exc:
        log.warning("image tower: fails on %s (%s); using transformers' forward", pixels.device, _short(exc))
        return reference
    if not cosine >= TOWER_MIN_COSINE:  # NaN included
        log.warning("image tower: disagrees with transformers' forward on %s (cosine %.5f); using transformers' "
                    "forward", pixels.device, cosine)
        return reference
    model.vision_model = None
    return tower


def _cosine(a: torch.nn.Module, b: torch.nn.Module, pixels: torch.Tensor) -> float:
    """The lowest cosine similarity between the embeddings ``a`` and ``b`` give the images in ``pixels``."""
    with torch.inference_mode():
        return torch.nn.functional.cosine_similarity(a(pixels).float(), b(pixels).float(), dim=-1).min().item()


def _check_pixels(spec: PreprocessSpec, device: torch.device) -> torch.Tensor:
    """Four preprocessed synthetic frames (fp32, on ``device``) to compare a precision with fp32 on:
    uniform noise, a smooth gradient, large flat blocks and fine stripes, so that both the
    high-contrast and the near-constant inputs a camera delivers are covered."""
    rng = np.random.default_rng(0)
    h, w = 240, 320
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.array([1.0, 0.6, 0.2], np.float32)
    gradient = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
    blocks = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((40, 40, 1))).astype(np.uint8)
    stripes = np.broadcast_to(((np.arange(w) // 3) % 2 * 255).astype(np.uint8)[None, :, None], (h, w, 3)).copy()
    images = [noise, gradient, blocks, stripes]
    return BatchPreprocessor(spec, device, torch.float32)(images).clone()


def _packed_if_equal(tower: torch.nn.Module, batch_size: int) -> torch.nn.Module:
    """The tower with oneDNN-packed linear layers (about 10% faster on CPUs), if it computes the same.

    The packed layers use internal torch.ops.mkldnn operators; a torch build without them, or
    one where they misbehave, keeps the plain tower (logged) instead of failing or
    computing something else: both towers embed two random images and must agree.
    """
    if not isinstance(tower, ImageTower):
        return tower
    dtype = next(tower.parameters()).dtype
    if not cpu_can_pack(dtype):
        log.debug("image tower: this CPU does not pack %s linear layers; using plain ones", dtype)
        return tower
    pixels = torch.randn(2, tower.channels, tower.image_size, tower.image_size,
                         generator=torch.Generator().manual_seed(0)).to(dtype)
    try:
        packed = tower.packed_for_cpu(batch_size)
        cosine = _cosine(packed, tower, pixels)
    except (RuntimeError, NotImplementedError, AttributeError) as exc:
        # Informational: nothing for the user to fix, the plain tower computes the same (about 10% slower).
        log.info("image tower: packed linear layers unavailable (%s); using plain ones", _short(exc))
        return tower
    if not cosine >= TOWER_MIN_COSINE:  # NaN included
        log.warning("image tower: packed linear layers disagree (cosine %.5f); using plain ones", cosine)
        return tower
    return packed


def _graphed_if_equal(encode: Callable[[torch.Tensor], torch.Tensor], row_shape: tuple[int, int, int],
                      dtype: torch.dtype, device: torch.device, batch_size: int) -> GraphedEncoder | None:
    """``encode`` replayed as CUDA graphs (streamclf/model/cuda_graphs.py), if capturing works and computes the same.

    An operator that cannot be captured on this torch build or GPU must cost speed, not
    correctness or the daemon: then the eager forward is kept, with a warning. Three random
    images go through both, which also checks the padding of a partly filled bucket.
    """
    example = torch.zeros((1, *row_shape), dtype=dtype, device=device)
    try:
        graphed = GraphedEncoder(encode, example, batch_size)
        pixels = torch.randn((min(3, batch_size), *row_shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)
        with torch.inference_mode():
            cosine = torch.nn.functional.cosine_similarity(graphed(pixels), encode(pixels), dim=-1).min().item()
    except (RuntimeError, NotImplementedError) as exc:
        log.warning("CUDA graphs: capture failed on %s (%s); running the model eagerly", device, _short(exc))
        return None
    if not cosine >= TOWER_MIN_COSINE:  # NaN included
        log.warning("CUDA graphs: replay disagrees with the eager forward (cosine %.5f); running the model eagerly",
                    cosine)
        return None
    log.info("CUDA graphs: captured for batch sizes %s in %.2f s", ",".join(map(str, graphed.buckets)),
             graphed.capture_s)
    return graphed


class ClipClassifier:
    """CLIP image and text towers on one device, scoring frames against label sets."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.threads = cfg.threads or torch_threads.DEFAULT_THREADS
        self._model_thread: int | None = None  # see reserve_model_thread
        # Serialises model calls: label updates (control messages) may come from another thread.
        self._lock = threading.Lock()
        # OpenCV's pool serves resize and colour conversion; its threads would compete with torch's.
        cv2.setNumThreads(cfg.opencv_threads)
        # On a thread of its own, whose torch worker pool ends with it (streamclf/model/torch_threads.py).
        spec, use_device = torch_threads.in_own_thread(self._load, "model-load")
        log.info(
            "model %s loaded on %s, precision %s, input %dx%d, preprocessing on the %s",
            cfg.name, self.device, self.precision, spec.crop_width, spec.crop_height,
            "device" if use_device else "host",
        )
        if cfg.precision == "auto" and self.precision == "fp32" and self.device.type == "cpu":
            log.info("precision auto is fp32 here: this CPU has no native bf16. precision: int8 ran the model 1.6 "
                     "times as fast on such a CPU (README, Performance) and is checked against fp32 when it loads")

    def _load(self) -> tuple[PreprocessSpec, bool]:
        """Load, convert and check the model (see ``__init__``); returns the preprocessing spec and where it runs."""
        cfg = self.cfg
        torch_threads.pin(self.threads)
        model, self.tokenizer, spec = _load_pretrained(cfg.name)
        model.eval()
        self.model = model.to(self.device)
        self.image_tower = _image_tower(self.model)
        self._autocast_dtype: torch.dtype | None = None
        self.int8_cosine: float | None = None  # set when precision int8 is checked against fp32 at load
        model_dtype = torch.float32
        if self.precision == "bf16" or (self.precision == "fp16" and self.device.type == "cuda"):
            # A bf16/fp16 image tower (not autocast): no casts per layer, half the weight bytes.
            # The text tower stays fp32: it runs once per label set, where its precision is free.
            model_dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            self.image_tower.to(model_dtype)
        elif self.precision == "fp16":
            self._autocast_dtype = torch.float16  # CPUs have few fp16 kernels; autocast keeps the rest fp32
        elif self.precision == "int8":
            self._quantize_int8(spec)
        if self.device.type == "cpu" and self.precision in ("bf16", "fp32"):
            self.image_tower = _packed_if_equal(self.image_tower, cfg.batch_size)
        self.model_dtype = model_dtype
        use_device = cfg.preprocess == "device" or (cfg.preprocess == "auto" and self.device.type == "cuda")
        preprocessor = DeviceBatchPreprocessor if use_device else BatchPreprocessor
        self.preprocess = preprocessor(spec, self.device, model_dtype)
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self._graphed: GraphedEncoder | None = None
        if self.device.type == "cuda" and cfg.cuda_graphs:
            row = (3, spec.crop_height, spec.crop_width)
            self._graphed = _graphed_if_equal(self._encode_eager, row, model_dtype, self.device, cfg.batch_size)
        return spec, use_device

    def reserve_model_thread(self) -> None:
        """From now on only the thread that calls ``become_model_thread`` runs torch with ``threads``.

        Every other thread that calls in (label prompts encoded on the main or the control thread)
        runs torch with one thread, so that the process keeps a single torch worker pool (why:
        streamclf/model/torch_threads.py). The pipeline reserves before it encodes its labels.
        """
        self._model_thread = 0  # no thread has ident 0

    def become_model_thread(self) -> None:
        """The calling thread runs the model from now on, with ``threads`` threads."""
        self._model_thread = threading.get_ident()
        torch_threads.pin(self.threads)

    def _pin_caller(self) -> None:
        owner = self._model_thread
        torch_threads.pin(self.threads if owner is None or owner == threading.get_ident() else 1)

    def _quantize_int8(self, spec: PreprocessSpec) -> None:
        """Quantise the image tower's Linear layers, then measure what that did to this model's embeddings.

        The tests can only check int8 on random weights; the weights a user loads are checked
        here, against the fp32 tower, on a few synthetic frames, and the result is logged
        (``int8_cosine``), with a warning when it is below ``INT8_MIN_COSINE``.
        """
        import warnings

        from torch.ao.quantization import quantize_dynamic

        reference = self.image_tower
        # torch.ao's eager quantisation is deprecated in favour of torchao, which we do not depend on;
        # it still works and is the fastest int8 path here (measured in benchmarks/), so silence the notice.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            self.image_tower = quantize_dynamic(reference, {torch.nn.Linear}, dtype=torch.qint8)  # a copy
        self.int8_cosine = _cosine(self.image_tower, reference, _check_pixels(spec, self.device))
        if not self.int8_cosine >= INT8_MIN_COSINE:  # NaN included
            log.warning(
                "precision int8 changes this model's image embeddings more than expected (lowest cosine "
                "%.4f to fp32 on synthetic frames, below %.3f): scores will differ from fp32; use precision "
                "auto or fp32 if detections look wrong", self.int8_cosine, INT8_MIN_COSINE)
        else:
            log.info("precision int8: image embeddings within cosine %.5f of fp32 (synthetic frames)",
                     self.int8_cosine)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    @torch.inference_mode()
    def encode_labels(self, prompts: Mapping[str, Sequence[str]]) -> LabelSet:
        """Embed each label's prompts: normalised mean of normalised prompt embeddings (fp32)."""
        self._pin_caller()
        names = tuple(prompts)
        flat = [p for n in names for p in prompts[n]]
        tokens = self.tokenizer(flat, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with self._lock:
            out = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text = self.model.text_projection(out.pooler_output).float()
        text = torch.nn.functional.normalize(text, dim=-1)
        rows, start = [], 0
        for n in names:
            k = len(prompts[n])
            rows.append(torch.nn.functional.normalize(text[start : start + k].mean(0), dim=-1))
            start += k
        return LabelSet(names, torch.stack(rows))

    @property
    def prepare_image(self) -> Callable[[np.ndarray], torch.Tensor] | None:
        """The part of preprocessing that can run ahead, per image and in any thread (None: none can).

        On the host path it is the resize and crop; ``embed_images(..., prepared=...)`` takes its results.
        """
        return self.preprocess.prepare

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray], bgr: bool = False,
                     prepared: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """L2-normalised fp32 image embeddings (N, dim) for (H, W, 3) uint8 images of any size.

        Images are RGB, or OpenCV's BGR with ``bgr=True`` (the pipeline's frames, as decoded).
        ``prepared[i]``, where not None, is ``prepare_image(images[i])``, computed earlier.
        """
        self._pin_caller()
        with self._lock:  # the preprocessor's buffers are reused: one batch at a time
            return self._encode(self.preprocess(list(images), bgr=bgr, prepared=prepared))

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings of an already preprocessed (N, 3, H, W) batch in ``model_dtype`` on the device.

        The model alone, without preprocessing: what the benchmark's model-only figure measures.
        """
        self._pin_caller()
        with self._lock:
            return self._encode(pixels)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._graphed is not None:
            return self._graphed(pixels)
        return self._encode_eager(pixels)

    def _encode_eager(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            emb = self.image_tower(pixels)
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def score(self, embeddings: torch.Tensor, labels: LabelSet, subsets: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Softmax(logit_scale * cosine) of each embedding over its own subset of label names."""
        cos = (embeddings @ labels.embeddings.T).cpu()
        results = []
        for row, names in zip(cos, subsets):
            idx = labels.index(names)
            probs = torch.softmax(self.logit_scale * row[idx], dim=-1).tolist()
            results.append(dict(zip(names, probs)))
        return results
