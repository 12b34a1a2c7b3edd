"""Where the model runs and in which precision: ``model.device`` and ``model.precision`` resolved for this machine."""

from __future__ import annotations

import torch

from streamclf.model.loading import ModelLoadError


def resolve_device(requested: str) -> torch.device:
    """``auto`` means the first CUDA device when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"model.device is {requested!r} but PyTorch sees no CUDA device (torch {torch.__version__})")
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
