"""Threat models: the set of allowed perturbations around an input.

Each norm ball is one small class that knows three things, so the optimiser never asks
which norm it is working with:

* ``random_init``: a random point of the ball (uniform over the ball, for L2 too);
* ``step``: the steepest-ascent step of a given length for a gradient;
* ``project``: the closest point of the ball.

Images live in [0, 1]; :func:`clip_to_box` keeps ``x + delta`` there. For L-inf the two
projections commute, for L2 clipping after projecting never leaves the ball (clipping
only shrinks each coordinate of ``delta``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from defpert.errors import DefpertError

NORMS = ("linf", "l2")


def flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``: (B, 1, 1, 1)."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class ThreatModel(ABC):
    """A norm ball of radius ``eps`` around each input."""

    eps: float

    norm: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise DefpertError(f"eps must be a positive number, got {self.eps}")

    @abstractmethod
    def random_init(self, shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
        """A random perturbation inside the ball (drawn on the CPU for reproducibility)."""

    @abstractmethod
    def step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """The steepest-ascent step of length ``step_size`` (in this norm) along ``grad``."""

    @abstractmethod
    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """The closest point of the ball to ``delta``."""

    def straight_through_step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        """:meth:`step` in the forward pass, differentiable in the backward pass.

        An attack that differentiates through a defense's steps needs their derivative;
        where the step has none (the L-inf sign), the backward pass treats it as the
        identity (a straight-through estimator).
        """
        return self.step(grad, step_size)

    def scaled_step(self, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        """A step along an already scaled direction (Adam's, RMSprop's): its per-pixel
        magnitudes kept, and its length set in this norm where per-pixel scaling has no
        meaning for it."""
        return self.step(direction, step_size)

    @abstractmethod
    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-example norm of ``delta`` (B,)."""


@dataclass(frozen=True)
class LinfBall(ThreatModel):
    """``||delta||_inf <= eps``: every pixel moves by at most ``eps``."""

    norm: str = "linf"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps >= 1:
            raise DefpertError(
                f"an L-inf eps of {self.eps} covers the whole [0, 1] pixel range; "
                "did you mean an L2 radius (-p l2)?"
            )

    def random_init(self, shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * self.eps

    def step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return step_size * grad.sign()

    def straight_through_step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return step_size * (grad.sign().detach() + grad - grad.detach())

    def scaled_step(self, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        return step_size * direction  # each pixel's own scale, ~1 for Adam once warmed up

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)


@dataclass(frozen=True)
class L2Ball(ThreatModel):
    """``||delta||_2 <= eps`` over all pixels of an image."""

    norm: str = "l2"

    def random_init(self, shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
        direction = torch.randn(shape, generator=generator)
        direction = direction / flat_norm(direction).clamp_min(1e-12)
        dim = math.prod(shape[1:])
        # radius ~ eps * U^(1/d): uniform over the ball's volume, not crowded at the centre
        radius = self.eps * torch.rand(shape[0], generator=generator) ** (1.0 / dim)
        return direction * radius.view(-1, *([1] * (len(shape) - 1)))

    def step(self, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return step_size * grad / flat_norm(grad).clamp_min(1e-12)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        norm = flat_norm(delta)
        return delta * (self.eps / norm.clamp_min(1e-12)).clamp(max=1.0)

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)


def make_threat(norm: str, eps: float) -> ThreatModel:
    """Build the threat model for a norm name (``linf`` or ``l2``), validating ``eps``."""
    if norm == "linf":
        return LinfBall(eps)
    if norm == "l2":
        return L2Ball(eps)
    raise DefpertError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")


def clip_to_box(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The part of ``delta`` that keeps ``x + delta`` inside [0, 1]."""
    return (x + delta).clamp(0.0, 1.0) - x


def validate_schedule(steps: int, step_size: float) -> None:
    """Refuse a number of steps below 1 or a non-positive step size."""
    if not isinstance(steps, int) or steps < 1:
        raise DefpertError(f"steps must be at least 1, got {steps}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise DefpertError(f"step size must be positive, got {step_size}")


def clip_to_both_balls(
    x: torch.Tensor, delta: torch.Tensor, anchor: torch.Tensor, threat: ThreatModel
) -> torch.Tensor:
    """The part of ``delta`` that keeps ``x + delta`` within eps of ``anchor`` too, and in [0, 1].

    The attack's budget measured from the natural image ``anchor`` as well as from its
    defended version ``x``: the point must lie in the intersection of the two balls. For
    L-inf the intersection is a box and the projection is exact. For L2, alternating
    projections approach it, and a last pull towards the midpoint of the two centres (in
    both balls and in the box) makes the point feasible without fail.
    """
    eps = threat.eps
    if threat.norm == "linf":
        low = torch.maximum(torch.maximum(x, anchor) - eps, torch.zeros_like(x))
        high = torch.minimum(torch.minimum(x, anchor) + eps, torch.ones_like(x))
        return torch.minimum(torch.maximum(x + delta, low), high) - x
    point = x + delta
    for _ in range(10):
        point = anchor + clip_to_box(anchor, threat.project(point - anchor))
        point = x + clip_to_box(x, threat.project(point - x))
    middle = (x + anchor) / 2
    scale = torch.ones(len(x), device=x.device)
    for centre in (x, anchor):  # the largest t in [0, 1] with middle + t (point - middle) inside
        d, c = (point - middle).flatten(1), (middle - centre).flatten(1)
        a, b, cc = (d * d).sum(1), 2 * (d * c).sum(1), (c * c).sum(1) - eps**2
        root = (-b + (b * b - 4 * a * cc).clamp_min(0).sqrt()) / (2 * a).clamp_min(1e-30)
        scale = torch.minimum(scale, torch.where(a > 0, root.clamp(0, 1), torch.ones_like(root)))
    return middle + scale.view(-1, *([1] * (x.dim() - 1))) * (point - middle) - x
