"""Where models and indexes run: the one place that picks a torch device and a weights dtype.

torch is imported when a function is called, so importing this module stays light (the API and CLI import it
through the embedders and the answerers).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mmrag.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str = "auto") -> str:
    """The torch device to run on, by name: `auto` is CUDA when torch sees a GPU, else CPU.

    A name torch does not know, or a CUDA device when torch sees none, is a ConfigError naming it. Callers that
    need a `torch.device` wrap the name (`torch.device(resolve_device(name))`).
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown torch device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA device (torch {torch.__version__})")
    return device


def is_cuda_device(device: str) -> bool:
    return device.startswith("cuda")


def select_dtype(dtype: str, device: str) -> torch.dtype:
    """The weights' dtype: `auto` is bf16 on CUDA (fp16 where the GPU lacks bf16) and fp32 on CPU."""
    import torch

    if dtype == "auto":
        if not is_cuda_device(device):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    named = {name: getattr(torch, name) for name in DTYPES}
    if dtype not in named:
        raise ConfigError(f"unknown dtype {dtype!r}; known: auto, {', '.join(named)}")
    if not is_cuda_device(device) and dtype != "float32":
        log.warning("dtype %s on %s is slow and less precise than float32", dtype, device)
    return named[dtype]
