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
