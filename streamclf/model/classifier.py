"""The classifier proper: a CLIP or SigLIP model's image and text towers on one device, scoring frames.

A label's embedding is made once when the labels are set, never per frame:
normalise((1 - w) * mean_text + w * mean_image), where mean_text is the mean of its prompts'
normalised text embeddings, mean_image that of its example images' normalised image
embeddings and w its ``examples_weight`` (w = 0 without examples).

A frame's scores depend on the family (``score_kind``); the rule is ``streamclf.scoring``'s.

With one prompt per label and no examples both equal what
``transformers.pipeline("zero-shot-image-classification")`` returns with ``hypothesis_template="{}"``.

The image tower: CLIP runs our pooled-embedding tower (``image_tower``, oneDNN-packed on the
CPU); SigLIP runs transformers' vision model forward (what ``get_image_features`` runs). Both
may run in bf16/fp16, int8 and as CUDA graphs; int8 and CUDA graphs are checked against the
eager forward when they load (``checks``).

Loading is in ``loading``, the load-time checks of each faster path in ``checks``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import torch

from streamclf.backend import BackendStatus
from streamclf.config import SCORE_OF_MODEL_TYPE, LabelExamples, ModelConfig
from streamclf.model import torch_threads
from streamclf.model.checks import (
    TransformersImageFeatures,
    checked_image_tower,
    graphed_if_equal,
    packed_if_equal,
    quantized_int8,
)
from streamclf.model.cuda_graphs import GraphedEncoder
from streamclf.model.device import resolve_device, resolve_precision
from streamclf.model.loading import ModelLoadError, load_pretrained
from streamclf.model.preprocess import BatchPreprocessor, DeviceBatchPreprocessor, Normaliser, PreprocessSpec
from streamclf.scoring import LabelSet, ScoreRule, example_mean, label_embeddings

log = logging.getLogger(__name__)


class ClipClassifier:
    """A CLIP or SigLIP model's image and text towers on one device, scoring frames against label sets."""

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
            log.info("precision auto is fp32 here: this CPU has no native bf16. precision: int8 is faster on such "
                     "a CPU and is checked against fp32 when it loads")

    def _load(self) -> tuple[PreprocessSpec, bool]:
        """Load, convert and check the model (see ``__init__``); returns the preprocessing spec and where it runs."""
        cfg = self.cfg
        torch_threads.pin(self.threads)
        model, self.tokenizer, spec = load_pretrained(cfg.name)
        model.eval()
        self.model = model.to(self.device)
        self.model_type: str = model.config.model_type
        self.score_kind: str = SCORE_OF_MODEL_TYPE[self.model_type]
        if cfg.score not in ("auto", self.score_kind):
            raise ModelLoadError(f"model.score is {cfg.score}, but {cfg.name} is a {self.model_type} model, whose "
                                 f"scores are a {self.score_kind}: set model.score: {self.score_kind} or auto")
        # Text is tokenised as the family was trained: SigLIP always padded to its 64 positions.
        self.max_text_tokens = int(model.config.text_config.max_position_embeddings)
        self._pad_to_max = self.model_type == "siglip"
        if self.model_type == "clip":
            self.image_tower = checked_image_tower(self.model)
        else:
            self.image_tower = TransformersImageFeatures(self.model.vision_model)
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
            self.image_tower, self.int8_cosine = quantized_int8(self.image_tower, spec, self.device)
        if self.device.type == "cpu" and self.precision in ("bf16", "fp32"):
            self.image_tower = packed_if_equal(self.image_tower, cfg.batch_size)
        self.model_dtype = model_dtype
        use_device = cfg.preprocess == "device" or (cfg.preprocess == "auto" and self.device.type == "cuda")
        preprocessor = DeviceBatchPreprocessor if use_device else BatchPreprocessor
        self.preprocess = preprocessor(spec, self.device, model_dtype)
        self._normalise = Normaliser(spec, self.device)
        self._planar_out: dict[int, torch.Tensor] = {}  # batch size -> reused input of embed_planar
        self.logit_scale = float(self.model.logit_scale.exp().item())
        bias = getattr(self.model, "logit_bias", None)
        self.logit_bias = float(bias.item()) if bias is not None else 0.0
        self.score_rule = ScoreRule(self.score_kind, self.logit_scale, self.logit_bias)
        self.spec = spec
        self._graphed: GraphedEncoder | None = None
        if self.device.type == "cuda" and cfg.cuda_graphs:
            row = (3, spec.crop_height, spec.crop_width)
            self._graphed = graphed_if_equal(self._encode_eager, row, model_dtype, self.device, cfg.batch_size)
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

    def backend_status(self) -> BackendStatus:
        """Always connected: the model is in this process."""
        return BackendStatus("local", "", True, "")

    @property
    def cuda_graph_buckets(self) -> tuple[int, ...]:
        """The batch sizes replayed as CUDA graphs; empty when the model runs eagerly."""
        return self._graphed.buckets if self._graphed is not None else ()

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def _tokens(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids (and attention mask, where the family uses one) for ``prompts``, on the device.

        Prompts longer than the text tower's positions are cut to fit, with a warning naming them:
        the words past the limit never reach the model.
        """
        limit = self.max_text_tokens
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        for prompt, n in zip(prompts, lengths, strict=True):
            if n > limit:
                log.warning("prompt %r is %d tokens, more than the %d this model reads: it is cut to the first %d",
                            prompt, n, limit, limit)
        padding = "max_length" if self._pad_to_max else True
        tokens = self.tokenizer(prompts, padding=padding, max_length=limit, truncation=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised fp32 text embeddings (N, dim) of ``prompts``."""
        self._pin_caller()
        tokens = self._tokens(list(prompts))
        with self._lock:
            text = self.model.get_text_features(**tokens)
        text = getattr(text, "pooler_output", text)  # transformers 5 may return an output object
        return torch.nn.functional.normalize(text.float(), dim=-1)

    @torch.inference_mode()
    def encode_labels(self, prompts: Mapping[str, Sequence[str]],
                      examples: Mapping[str, LabelExamples] | None = None) -> LabelSet:
        """Each label's embedding from its prompts and, where ``examples`` has it, its example images.

        normalise((1 - w) * mean of normalised prompt embeddings + w * mean of normalised image
        embeddings), w the examples' weight (0..1); fp32. Raises ValueError naming an example image
        that cannot be read.
        """
        text = self.encode_prompts([p for n in prompts for p in prompts[n]]).cpu().numpy()
        rows = label_embeddings(prompts, text, examples or {}, self._example_mean)
        return LabelSet(tuple(prompts), torch.from_numpy(rows).to(self.device))

    def _example_mean(self, paths: Sequence) -> np.ndarray:
        def embed(images: list[np.ndarray]) -> np.ndarray:
            return self.embed_images(images, bgr=True).cpu().numpy()

        return example_mean(paths, self.cfg.batch_size, embed)

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

    @torch.inference_mode()
    def embed_planar(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings (N, dim), fp32 on the host, of (N, 3, crop_h, crop_w) uint8 RGB pixels already resized
        and cropped (what a Triton node sends, ``streamclf.remote.protocol``): normalised here, then the model."""
        self._pin_caller()
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        with self._lock:
            out = self._planar_out.get(len(x))
            if out is None:
                out = self._planar_out[len(x)] = torch.empty(x.shape, dtype=self.model_dtype, device=self.device)
            return self._encode(self._normalise(x, out, False)).cpu().numpy()

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._graphed is not None:
            return self._graphed(pixels)
        return self._encode_eager(pixels)

    def _encode_eager(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            emb = self.image_tower(pixels)
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def score(self, embeddings: torch.Tensor, labels: LabelSet,
              subsets: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Scores (0..1) of each embedding for its own subset of label names (``streamclf.scoring``)."""
        return self.score_rule.scores((embeddings @ labels.embeddings.T).cpu().numpy(), labels, subsets)
