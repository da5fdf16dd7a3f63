"""Helpers shared by the attacks: chunking, gradients of a per-example loss, the box."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from defpert.core.threat import ThreatModel, clip_to_both_balls, clip_to_box
from defpert.runtime import threads
from defpert.runtime.devices import model_device


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(n)`` (each one a point
    where the thread count may follow the machine's load: ``defpert.runtime.threads``)."""
    for lo in range(0, n, size):
        threads.adapt()
        yield slice(lo, min(lo + size, n))


def project(
    threat: ThreatModel, x: torch.Tensor, point: torch.Tensor, anchor: torch.Tensor | None = None
) -> torch.Tensor:
    """The closest point to ``point`` in the threat model's ball around ``x`` and in [0, 1]
    (and, given an ``anchor``, a point within eps of it too: see ``clip_to_both_balls``)."""
    delta = clip_to_box(x, threat.project(point - x))
    return x + (delta if anchor is None else clip_to_both_balls(x, delta, anchor, threat))


def rows(mask: torch.Tensor) -> torch.Tensor:
    """Indices (K,) of the true entries of a boolean mask (B,)."""
    return mask.nonzero().squeeze(1)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits without a graph, as float32."""
    with torch.no_grad():
        return model(x).float()


def logits_in_chunks(model: nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    """Logits (N, classes) without a graph of inputs ``x`` on any device, computed on the
    model's device ``size`` images at a time; returned on ``x``'s device."""
    device = model_device(model)
    if len(x) <= size:
        return logits_of(model, x.to(device)).to(x.device)
    return torch.cat([logits_of(model, x[part].to(device)).to(x.device)
                      for part in chunks(len(x), size)])  # fmt: skip
