"""Textbook versions of what the engine and the zoo do, to check and measure them against.

The tests assert that the engine's results equal :func:`textbook_pgd`'s and that the zoo's
layout changes nothing but speed; the benchmarks report the engine's speed over it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defpert.core.threat import ThreatModel
from defpert.runtime.devices import model_device


class _ChannelsFirstNormalize(nn.Module):
    """The zoo's normalisation without its channels-last step."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", norm.mean.detach().clone())  # type: ignore[operator]
        self.register_buffer("std", norm.std.detach().clone())  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous()


def textbook_model(model: nn.Sequential) -> nn.Sequential:
    """The same weights laid out as usual: channels-first, ReLU before every max-pool."""
    layers = list(copy.deepcopy(model).children())
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    plain = nn.Sequential(*layers)
    plain.load_state_dict(model.state_dict())
    plain = plain.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    plain[0] = _ChannelsFirstNormalize(plain[0])
    return plain.eval()


def textbook_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int, step: float
) -> torch.Tensor:
    """PGD as written in papers: the whole batch at once, gradient of the summed loss.

    Its step and projection are written here, independently of :mod:`defpert.core.threat`
    (only the norm's name and radius are read), so a wrong projection there shows up as a
    difference from this reference.
    """
    eps = threat.eps
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = delta.detach()
        if threat.norm == "linf":
            delta = torch.clamp(delta + step * torch.sign(grad), min=-eps, max=eps)
        else:
            grad_norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta + step * grad / grad_norm.clamp_min(1e-12)
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * (eps / norm.clamp_min(1e-12)).clamp(max=1.0)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def art_classifier(model: nn.Module, x: torch.Tensor, num_classes: int) -> Any:
    """Wrap a [0, 1]-pixel model as ART's PyTorchClassifier (a peer for tests and benchmarks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from art.estimators.classification import PyTorchClassifier

    device = model_device(model)
    return PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes, clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )  # fmt: skip


class GradientMasked(nn.Module):
    """A classifier behind an input quantiser whose gradient is zero everywhere.

    Gradient attacks see nothing (``sign(0) = 0``), although the classifier is as weak as
    before: the textbook case of gradient masking, which only a black-box attack (Square)
    measures. Used by the tests and the cross-check against AutoAttack.
    """

    def __init__(self, model: nn.Module, levels: int = 16) -> None:
        super().__init__()
        self.model = model
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantised = torch.round(x * (self.levels - 1)) / (self.levels - 1)  # zero gradient
        return self.model(quantised)
