"""``<prefix>_text`` on a stock Triton: prompts (BYTES) to L2-normalised embeddings (FP32).

Tokenizes with the ``tokenizers`` library from the checkpoint's ``tokenizer.json`` exactly as the
local model does (``ClipClassifier._tokens``): truncated to the text tower's positions, CLIP padded
to the longest prompt with an attention mask, SigLIP padded to all its positions without one. The
settings are in ``text.json``, written by ``streamclf export`` next to this file. The tokens then go
to the ONNX text encoder (``<prefix>_text_encoder``) through Triton itself (business logic
scripting), so the encoder runs on Triton's ONNX Runtime backend, on the GPU where there is one,
and this model needs only numpy and ``tokenizers`` in the container.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SETTINGS_FILE, TOKENIZER_FILE = "text.json", "tokenizer.json"


def load_tokenizer(directory: Path):
    """(tokenizer with truncation and padding set, settings) from what the export wrote in ``directory``."""
    from tokenizers import Tokenizer

    settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    limit = int(settings["max_length"])
    tokenizer.enable_truncation(limit, direction=settings["truncation_side"])
    tokenizer.enable_padding(direction=settings["padding_side"], pad_id=int(settings["pad_id"]),
                             pad_token=settings["pad_token"], length=limit if settings["pad_to_max_length"] else None)
    return tokenizer, settings


def tokenize(tokenizer, settings: dict, prompts: list[str]) -> dict[str, np.ndarray]:
    """The encoder's inputs for ``prompts``: input_ids, and attention_mask where the family uses one (int64)."""
    encodings = tokenizer.encode_batch(prompts, add_special_tokens=True)
    tokens = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64)}
    if settings["attention_mask"]:
        tokens["attention_mask"] = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return tokens


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize`` once, ``execute`` per batch of requests."""

    def initialize(self, args: dict) -> None:
        self.tokenizer, self.settings = load_tokenizer(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            prompts = pb_utils.get_input_tensor_by_name(request, "prompts").as_numpy().reshape(-1)
            texts = [bytes(p).decode("utf-8", errors="replace") for p in prompts]
            tokens = tokenize(self.tokenizer, self.settings, texts)
            encoder = pb_utils.InferenceRequest(
                model_name=self.settings["encoder"], requested_output_names=["embeddings"],
                inputs=[pb_utils.Tensor(name, value) for name, value in tokens.items()])
            result = encoder.exec()
            if result.has_error():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result.error().message())))
                continue
            embeddings = pb_utils.get_output_tensor_by_name(result, "embeddings").as_numpy().astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("embeddings", embeddings)]))
        return responses
