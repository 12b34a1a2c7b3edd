"""Finding and loading a checkpoint (CLIP or SigLIP): a local directory, the Hugging Face cache, or the hub.

The family is the checkpoint's ``model_type`` (its config.json): ``clip`` loads as ``CLIPModel``,
``siglip`` as ``SiglipModel`` (SigLIP, and SigLIP 2's fixed-resolution checkpoints, which are
saved as ``siglip``). SigLIP 2's NaFlex checkpoints (``siglip2``) take patch sequences of varying
length rather than square images, and are refused with a message that names the alternative.

Every way loading can fail ends in a ``ModelLoadError`` whose message says where we looked
and what to do, never in a traceback: the daemon usually runs as a service on a machine
without network, where the fix (download once elsewhere, copy the directory, make it
readable) is the whole answer the user needs.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

from streamclf.backend import ModelLoadError
from streamclf.config import SCORE_OF_MODEL_TYPE
from streamclf.model.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

# The files transformers reads from a model directory: weights, configs and tokenizer files.
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message (transformers' run on for a screen), or its type."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _looks_like_path(name: str) -> bool:
    """A hub id is "org/name"; anything else with a path separator can only be a directory."""
    return name.startswith((".", "~", "/")) or name.count("/") > 1


def _load_error(name: str, cause: BaseException | str) -> ModelLoadError:
    from huggingface_hub import constants

    looked = []
    if _looks_like_path(name) or Path(name).exists():
        found = "exists" if Path(name).is_dir() else "not found"
        looked.append(f"the local directory {os.path.abspath(name)} ({found})")
    looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE}")
    if constants.HF_HUB_OFFLINE:
        looked.append("not the hub: HF_HUB_OFFLINE is set")
    else:
        looked.append("the hub (unreachable from this machine)" if not _hub_reachable() else "the hub")
    return ModelLoadError(
        f"cannot load model {name!r}: {cause}\n"
        f"  looked in: " + "; ".join(looked) + "\n"
        "  fix: on a machine with network, download it once:\n"
        f"    python -c \"from huggingface_hub import snapshot_download; snapshot_download('{name}', "
        f"local_dir='clip-model', allow_patterns=['*.json', '*.txt', '*.model', '*.safetensors'])\"\n"
        "  then copy the clip-model directory here and set model.name in the config to its path\n"
        "  (or set HF_HOME to a Hugging Face cache that already holds the model)."
    )


def _unreadable(directory: Path) -> Path | None:
    """The directory itself, or the first model file in it, that this process cannot read; None if all can be."""
    if not os.access(directory, os.R_OK | os.X_OK):
        return directory
    for path in sorted(directory.iterdir()):
        if path.suffix in _MODEL_FILE_SUFFIXES and path.is_file() and not os.access(path, os.R_OK):
            return path
    return None


def check_readable(name: str, directory: Path) -> None:
    """Raise ``ModelLoadError`` if this process cannot read the model directory or a model file in it.

    ``save_pretrained`` writes the weights readable by their owner only, so a service running
    as another user (systemd's DynamicUser) cannot read a directory its admin saved; without
    this check transformers reports the weights as missing, which sends the user looking in
    the wrong place.
    """
    path = _unreadable(directory)
    if path is None:
        return
    st = path.stat()
    raise ModelLoadError(
        f"cannot load model {name!r}: {path} is not readable by this process "
        f"(uid {os.geteuid()}; the {'directory' if path.is_dir() else 'file'} has mode "
        f"{stat.filemode(st.st_mode)}, owner uid {st.st_uid})\n"
        f"  fix: make the model directory readable by every user: chmod -R a+rX {directory}"
    )


def _preprocess_spec(name: str, source: str, local_only: bool, model) -> PreprocessSpec:
    """The checkpoint's image preprocessing, from whichever file transformers keeps it in.

    transformers 5 saves it nested in ``processor_config.json``, older versions in
    ``preprocessor_config.json``; transformers' own resolution reads either. We take its
    settings rather than an image processor object, which would need Pillow or torchvision,
    neither of which the daemon otherwise uses. A checkpoint without them gets its family's
    defaults at the vision tower's input size, never another family's.
    """
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(source, local_files_only=local_only)
    except OSError:
        spec = PreprocessSpec.family_default(model.config.model_type, model.config.vision_config.image_size)
        family = {"clip": "CLIP", "siglip": "SigLIP"}.get(model.config.model_type, model.config.model_type)
        log.warning("model %s has no image processor settings (preprocessor_config.json or processor_config.json); "
                    "using %s's defaults %s", name, family, spec)
        return spec
    return PreprocessSpec.from_processor_dict(settings)


def _model_class(name: str, source: str, local_only: bool):
    """The transformers class for the checkpoint's ``model_type``; ModelLoadError for a family we do not score."""
    from transformers import AutoConfig, CLIPModel, SiglipModel

    model_type = AutoConfig.from_pretrained(source, local_files_only=local_only).model_type
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if model_type in classes:
        return classes[model_type]
    if model_type == "siglip2":
        raise ModelLoadError(
            f"model {name!r} is a SigLIP 2 NaFlex checkpoint (model_type siglip2), whose image input is a "
            "variable-length patch sequence; streamclf reads fixed-resolution checkpoints: use one such as "
            "google/siglip2-base-patch16-224 (model_type siglip)")
    raise ModelLoadError(f"model {name!r} has model_type {model_type!r}; supported: "
                         f"{', '.join(sorted(SCORE_OF_MODEL_TYPE))}")


def load_pretrained(name: str):
    """Load model, tokenizer and preprocessing spec from a local directory, the cache, or the hub.

    ``name`` is a hub id ("org/name") or a directory. Returns ``(model, tokenizer,
    PreprocessSpec)``, the model a ``CLIPModel`` or ``SiglipModel`` by the checkpoint's
    ``model_type``; raises ``ModelLoadError`` with what to do when it cannot.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one log line says the model loaded; no progress bars in service logs

    local_dir = Path(name).expanduser()
    is_local = local_dir.is_dir()
    if not is_local and _looks_like_path(name):
        raise _load_error(name, "no such directory")
    if is_local:
        check_readable(name, local_dir)
    source = str(local_dir) if is_local else name
    # Cache first: a machine that has the weights must not stall on an unreachable hub.
    attempts = [True] if is_local else [True, False]
    last: BaseException | None = None
    for local_only in attempts:
        if not local_only and (_offline() or not _hub_reachable()):
            break
        try:
            model = _model_class(name, source, local_only).from_pretrained(source, local_files_only=local_only)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            return model, tokenizer, _preprocess_spec(name, source, local_only, model)
        except (OSError, ValueError) as exc:
            last = exc
        except ImportError as exc:  # e.g. SigLIP's SentencePiece tokenizer without the sentencepiece package
            raise ModelLoadError(f"cannot load model {name!r}: {short_error(exc)}\n"
                                 "  fix: install the package it names into streamclf's environment "
                                 "(pip install 'streamclf[siglip]' installs sentencepiece)") from None
    raise _load_error(name, short_error(last) if last else "not in the cache and the hub is unreachable")
