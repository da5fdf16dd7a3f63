"""Choosing where tensors live: a GPU when present, unless the user says otherwise."""

from __future__ import annotations

import torch
from torch import nn

from defpert.errors import DefpertError


def pick_device(name: str | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else CPU; anything else is checked."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DefpertError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DefpertError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


# Images per chunk of the projected-gradient loop. On the CPU a chunk of 64 MNIST-sized
# images keeps the activations of a forward and backward pass in cache: measured on a
# 2-core CPU with the cnn (benchmarks/pgd_throughput.py), 64 beats 32 by ~5 %, 128 by
# ~15 % and 512 by ~2x. A GPU wants large chunks to fill its cores.
CPU_CHUNK = 64
GPU_CHUNK = 1024


def default_chunk_size(device: torch.device) -> int:
    """How many images the engine processes at once on ``device``."""
    return GPU_CHUNK if device.type == "cuda" else CPU_CHUNK
