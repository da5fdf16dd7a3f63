"""Textbook versions of what the engine and the zoo do, to check and measure them against.

The tests assert that the engine's results equal :func:`textbook_pgd`'s and that the zoo's
layout changes nothing but speed; the benchmarks report the engine's speed over it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from defpert.threat import ThreatModel


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
    """PGD as written in papers: the whole batch at once, gradient of the summed loss."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = threat.project(delta.detach() + threat.step(grad, step))
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
