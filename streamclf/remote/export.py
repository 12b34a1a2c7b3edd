"""``streamclf export``: a Triton model repository that a stock Triton (or KServe) container serves.

The repository holds the same three models, with the same tensors, as ``streamclf serve``
(``streamclf.remote.protocol``), so a node cannot tell the two apart; plus the text encoder the
text model calls:

- ``<prefix>_image`` (ONNX, ``onnxruntime_onnx``): uint8 planar RGB pixels to L2-normalised
  embeddings. The normalisation ((x / 255 - mean) / std) and the final L2 normalisation are part of
  the graph; dynamic batching with the serve config's batch sizes, queue delay and instances.
- ``<prefix>_text_encoder`` (ONNX): token ids (and CLIP's attention mask) to L2-normalised embeddings.
- ``<prefix>_text`` (Python backend): prompts to embeddings. ONNX cannot tokenize, so this model
  tokenizes with ``tokenizers`` and calls the encoder through Triton (``triton_models/text_model.py``).
- ``<prefix>_info`` (Python backend): the checkpoint's ``ServerInfo``, fixed at export time.

Both ONNX graphs are run with ONNX Runtime against the torch model before the export returns.
The model is exported in fp32 (the precision options of ``model:`` are the local model's).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from streamclf.config import SCORE_OF_MODEL_TYPE, ServeConfig, ServeSettings
from streamclf.image_spec import PreprocessSpec
from streamclf.model.checks import TransformersImageFeatures, TransformersImageTower
from streamclf.model.loading import ModelLoadError, load_pretrained
from streamclf.remote import protocol as p

log = logging.getLogger(__name__)

ENCODER = "text_encoder"  # <prefix>_text_encoder: the ONNX text tower the text model calls
OPSET = 18  # ONNX Runtime 1.14 and later (Triton 23.04 and later)
MOST_ONNX_DIFFERENCE = 1e-4  # fp32 graphs: ONNX Runtime and torch differ by rounding only


class ExportError(Exception):
    """The model cannot be exported as a Triton repository; the message says why."""


class ImageGraph(torch.nn.Module):
    """(N, 3, H, W) uint8 RGB pixels -> (N, dim) L2-normalised fp32 embeddings, normalisation included."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, tower: torch.nn.Module, spec: PreprocessSpec):
        super().__init__()
        self.tower = tower
        # x / 255 then (x - mean) / std folded into one multiply-add per channel, as the local path does.
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in spec.std]).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(spec.mean, spec.std, strict=True)])
                             .view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.tower(pixels.float() * self.scale + self.shift), dim=-1)


class TextGraph(torch.nn.Module):
    """Token ids (and attention mask) -> (N, dim) L2-normalised fp32 embeddings: ``encode_prompts``'s model part."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        text = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        text = getattr(text, "pooler_output", text)  # transformers 5 may return an output object
        return torch.nn.functional.normalize(text.float(), dim=-1)


# -- config.pbtxt --------------------------------------------------------------------------------


def _tensor(name: str, data_type: str, dims: tuple[int, ...]) -> str:
    return f'{{ name: "{name}" data_type: {data_type} dims: [ {", ".join(str(d) for d in dims)} ] }}'


def model_config(name: str, kind: str, max_batch_size: int, inputs: list[str], outputs: list[str],
                 extra: str = "") -> str:
    """A config.pbtxt: ``kind`` is ``platform: "onnxruntime_onnx"`` or ``backend: "python"``."""
    sep = ",\n  "
    return (f'name: "{name}"\n{kind}\nmax_batch_size: {max_batch_size}\n'
            f"input [\n  {sep.join(inputs)}\n]\noutput [\n  {sep.join(outputs)}\n]\n{extra}")


def _instances(count: int, kind: str) -> str:
    return f"instance_group [ {{ count: {count} kind: {kind} }} ]\n"


def _batching(s: ServeSettings) -> str:
    preferred = "".join(f" preferred_batch_size: {n}" for n in s.preferred_batch_sizes)
    return f"dynamic_batching {{{preferred} max_queue_delay_microseconds: {s.max_queue_delay_us} }}\n"


# -- the ONNX graphs -----------------------------------------------------------------------------


_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


def _to_onnx(module: torch.nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic: tuple,
             path: Path) -> None:
    """Export ``module`` called on ``args`` to ``path`` (weights in ``path``.data beside it)."""
    inputs, outputs = names
    # The exporter's and transformers' tracing notes (a few hundred lines per graph) are not the user's to act on.
    levels = {name: logging.getLogger(name).level for name in _EXPORTER_LOGGERS}
    try:
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, opset_version=OPSET,
                              dynamo=True, dynamic_shapes=dynamic, external_data=True, verbose=False)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _check_onnx(path: Path, module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> None:
    """Raise ExportError unless ONNX Runtime's output of the graph at ``path`` is torch's."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    with torch.inference_mode():
        want = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    worst = float(np.abs(got - want).max())
    if got.shape != want.shape or worst > MOST_ONNX_DIFFERENCE:
        raise ExportError(f"the exported {path.parent.parent.name} computes other embeddings than torch "
                          f"(shape {got.shape} against {want.shape}, largest difference {worst:.2e})")


def _fresh(directory: Path) -> Path:
    """``directory``/1, empty: a model exported again replaces the old one."""
    if directory.exists():
        shutil.rmtree(directory)
    version = directory / "1"
    version.mkdir(parents=True)
    return version


def _write_image(out: Path, graph: ImageGraph, info: p.ServerInfo, prefix: str, s: ServeSettings) -> None:
    name = p.model_name(prefix, p.IMAGE)
    version = _fresh(out / name)
    spec = info.preprocess
    row = (3, spec.crop_height, spec.crop_width)
    batch = torch.export.Dim("batch", min=1, max=max(2, s.max_batch_size))
    example = torch.randint(0, 256, (2, *row), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    _to_onnx(graph, (example,), ([p.PIXELS], [p.EMBEDDINGS]), ({0: batch},), version / "model.onnx")
    pixels = np.random.default_rng(1).integers(0, 256, (3, *row), dtype=np.uint8)
    _check_onnx(version / "model.onnx", graph, {p.PIXELS: pixels})
    (out / name / "config.pbtxt").write_text(model_config(
        name, 'platform: "onnxruntime_onnx"', s.max_batch_size, [_tensor(p.PIXELS, "TYPE_UINT8", row)],
        [_tensor(p.EMBEDDINGS, "TYPE_FP32", (info.embedding_dim,))],
        _batching(s) + _instances(s.instances, "KIND_AUTO")))


def _text_settings(model, tokenizer, encoder: str) -> dict:
    """How ``ClipClassifier._tokens`` tokenizes, as values the text model reads (``text.json``)."""
    if tokenizer.pad_token_id is None:
        raise ExportError("the checkpoint's tokenizer has no padding token, which batching prompts needs")
    return {"encoder": encoder, "max_length": int(model.config.text_config.max_position_embeddings),
            # SigLIP is trained on text padded to all its positions; CLIP pads to the longest prompt.
            "pad_to_max_length": model.config.model_type == "siglip",
            "attention_mask": "attention_mask" in tokenizer.model_input_names,
            "pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token),
            "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side}


def _save_tokenizer(tokenizer, path: Path) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"the checkpoint's tokenizer ({type(tokenizer).__name__}) has no tokenizers-library form "
                          "(tokenizer.json), which the exported text model reads")
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()  # transformers sets these per call; text.json says how the text model sets them
    plain.no_padding()
    plain.save(str(path))


def _write_text(out: Path, model, tokenizer, info: p.ServerInfo, prefix: str, s: ServeSettings) -> None:
    from streamclf.remote.triton_models import text_model

    encoder_name = p.model_name(prefix, ENCODER)
    settings = _text_settings(model, tokenizer, encoder_name)
    version = _fresh(out / encoder_name)
    graph = TextGraph(model).eval()
    examples = tokenizer(["a photo", "a photo of a cat on a mat"], padding="max_length" if settings["pad_to_max_length"]
                         else True, max_length=settings["max_length"], truncation=True, return_tensors="pt")
    names = ["input_ids", "attention_mask"] if settings["attention_mask"] else ["input_ids"]
    batch = torch.export.Dim("batch", min=1, max=max(2, s.max_batch_size))
    positions = None if settings["pad_to_max_length"] else torch.export.Dim("tokens", min=2, max=settings["max_length"])
    axes = {0: batch, 1: positions} if positions is not None else {0: batch}
    _to_onnx(graph, tuple(examples[n] for n in names), (names, [p.EMBEDDINGS]), tuple(axes for _ in names),
             version / "model.onnx")
    seq = (-1,) if positions is not None else (settings["max_length"],)
    (out / encoder_name / "config.pbtxt").write_text(model_config(
        encoder_name, 'platform: "onnxruntime_onnx"', s.max_batch_size, [_tensor(n, "TYPE_INT64", seq) for n in names],
        [_tensor(p.EMBEDDINGS, "TYPE_FP32", (info.embedding_dim,))], _instances(1, "KIND_AUTO")))

    name = p.model_name(prefix, p.TEXT)
    version = _fresh(out / name)
    _save_tokenizer(tokenizer, version / text_model.TOKENIZER_FILE)
    (version / text_model.SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(str(resources.files("streamclf.remote.triton_models") / "text_model.py"), version / "model.py")
    prompts = ["a photo of a cat", "x " * (settings["max_length"] + 8)]  # the second is cut to fit
    tokenizer_as_served, settings_as_served = text_model.load_tokenizer(version)
    tokens = text_model.tokenize(tokenizer_as_served, settings_as_served, prompts)
    _check_onnx(out / encoder_name / "1" / "model.onnx", graph, tokens)
    (out / name / "config.pbtxt").write_text(model_config(
        name, 'backend: "python"', s.max_batch_size, [_tensor(p.PROMPTS, "TYPE_STRING", (1,))],
        [_tensor(p.EMBEDDINGS, "TYPE_FP32", (info.embedding_dim,))], _instances(1, "KIND_CPU")))


def _write_info(out: Path, info: p.ServerInfo, prefix: str) -> None:
    from streamclf.remote.triton_models import info_model

    name = p.model_name(prefix, p.INFO)
    version = _fresh(out / name)
    (version / info_model.INFO_FILE).write_text(info.to_json(), encoding="utf-8")
    shutil.copyfile(str(resources.files("streamclf.remote.triton_models") / "info_model.py"), version / "model.py")
    (out / name / "config.pbtxt").write_text(model_config(
        name, 'backend: "python"', 8, [_tensor(p.PROTOCOL_INPUT, "TYPE_STRING", (1,))],
        [_tensor(p.INFO_OUTPUT, "TYPE_STRING", (1,))], _instances(1, "KIND_CPU")))


def export_repository(cfg: ServeConfig, out: Path) -> p.ServerInfo:
    """Write the Triton model repository of ``cfg``'s model into ``out`` (its four model directories are
    replaced, anything else there is left); returns the ``ServerInfo`` its info model answers.

    Raises ModelLoadError (the checkpoint) or ExportError (the export), ImportError without onnx,
    onnxscript or onnxruntime.
    """
    model, tokenizer, spec = load_pretrained(cfg.model.name)
    model = model.float().eval()
    model_type = model.config.model_type
    tower = (TransformersImageTower(model.vision_model, model.visual_projection) if model_type == "clip"
             else TransformersImageFeatures(model.vision_model))
    image = ImageGraph(tower, spec).eval()
    with torch.inference_mode():
        dim = int(image(torch.zeros(1, 3, spec.crop_height, spec.crop_width, dtype=torch.uint8)).shape[-1])
    bias = getattr(model, "logit_bias", None)
    info = p.ServerInfo(model=cfg.model.name, model_type=model_type, score_kind=SCORE_OF_MODEL_TYPE[model_type],
                        logit_scale=float(model.logit_scale.exp().item()),
                        logit_bias=float(bias.item()) if bias is not None else 0.0, embedding_dim=dim,
                        max_batch_size=cfg.serve.max_batch_size, preprocess=spec)
    prefix = cfg.model.triton.model_prefix
    out.mkdir(parents=True, exist_ok=True)
    _write_image(out, image, info, prefix, cfg.serve)
    _write_text(out, model, tokenizer, info, prefix, cfg.serve)
    _write_info(out, info, prefix)
    return info


def run_export(cfg: ServeConfig, out_dir: str) -> int:
    """``streamclf export -c serve.yaml OUT_DIR`` once its config is read: 0 written, 2 model or export failed."""
    out = Path(out_dir)
    try:
        info = export_repository(cfg, out)
    except ImportError as exc:
        log.error("streamclf export needs torch, transformers, onnx, onnxscript, onnxruntime and tokenizers (%s): "
                  "pip install 'streamclf[export]'", exc)
        return 2
    except (ModelLoadError, ExportError) as exc:
        log.error("%s", exc)
        return 2
    names = ", ".join(p.model_name(cfg.model.triton.model_prefix, w) for w in (p.IMAGE, p.TEXT, ENCODER, p.INFO))
    log.info("exported %s (%s, %d dims) to %s: %s; serve it with tritonserver --model-repository=%s",
             info.model, info.model_type, info.embedding_dim, out, names, out.resolve())
    return 0
