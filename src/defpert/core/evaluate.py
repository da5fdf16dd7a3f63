"""Predictions and accuracies, batched, without gradients."""

from __future__ import annotations

import torch
from torch import nn

from defpert.runtime.devices import model_device


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of each image (N,), computed on the model's device."""
    device = model_device(model)
    out = [
        model(images[i : i + batch_size].to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def correct(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kw: int
) -> torch.Tensor:
    """Boolean mask (N,): is each image classified correctly?"""
    return predict(model, images, **kw) == labels.cpu()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kw: int) -> float:
    """Fraction of images classified correctly."""
    if len(labels) == 0:
        return float("nan")
    return float(correct(model, images, labels, **kw).float().mean())
