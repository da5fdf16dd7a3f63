"""Madry et al.'s projected gradient descent (L-inf or L2) on the engine: the attack of the
original study (``-p linf -k 20 -e 0.2 -a 0.01``) and the strong suite's PGD-100."""

from __future__ import annotations

import torch
from torch import nn

from defpert.core.engine import Schedule, perturb
from defpert.core.objectives import get_objective
from defpert.core.threat import ThreatModel


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    loss: str = "ce",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Untargeted PGD (Madry et al., 2018): ascend ``loss`` inside the threat model's ball.

    ``x`` is (N, C, H, W) in [0, 1], ``y`` (N,) the true labels; returns the adversarial
    inputs (N, C, H, W) in [0, 1] with ``threat.size(x_adv - x) <= eps`` (and within eps
    of ``anchor`` too, where given).

    >>> x_adv = pgd(model, x, y, threat=LinfBall(0.2), steps=20, step_size=0.01)
    """
    schedule = Schedule(steps, step_size, ascend=True, random_start=random_start)
    return perturb(
        model, x, y, threat=threat, objective=get_objective(loss), schedule=schedule,
        generator=generator, batch_size=batch_size, progress=progress, desc=f"pgd-{loss}",
        precision=precision, anchor=anchor,
    )  # fmt: skip
