"""Per-example objectives ``f(logits, labels) -> (B,)``.

Each returns one value per example; the engine sums them before differentiating, never
averages. (With a mean, each example's gradient is divided by the batch size, underflows
to exactly zero on confident inputs in float32, and ``sign(0) = 0`` makes a defensive
perturbation silently do nothing: results would change with the batch size.)

Convention: larger is worse for the true label. An attack ascends, a proactive defense
descends.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from defpert.errors import DefpertError

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to the given labels (B,). Saturates on confident inputs."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CW logit margin ``max_{j != y} z_j - z_y`` (B,): positive means misclassified.

    Unlike cross-entropy it does not saturate, so its gradient stays informative on
    confidently classified inputs.
    """
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def capped_margin(kappa: float) -> Objective:
    """The CW margin capped at ``kappa`` (Carlini and Wagner's confidence): ``min(margin,
    kappa)`` (B,). Ascending it pushes a point ``kappa`` logits past the boundary and then
    leaves it there (the gradient is zero above the cap): a candidate a test-time defense
    cannot pull back with a small move, without the drift of an unbounded loss."""
    if not kappa >= 0:
        raise DefpertError(f"kappa must be 0 or more, got {kappa}")

    def objective(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin(logits, labels).clamp(max=kappa)

    objective.__name__ = f"margin_capped_at_{kappa:g}"
    return objective


def hedge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over all classes (B,); ``labels`` is ignored.

    Ascending it lifts every class's logit relative to the log-partition, which pulls an
    input away from any single class it was pushed into (Wu et al., 2021, "Attacking
    adversarial attacks as a defense").
    """
    del labels
    return logits.shape[1] * torch.logsumexp(logits, dim=1) - logits.sum(dim=1)


OBJECTIVES: dict[str, Objective] = {"ce": cross_entropy, "margin": margin, "hedge": hedge}


def summed(objective: Objective) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``objective`` summed over the examples, as one operation where torch fuses it.

    Cross-entropy's fused sum gives every example the same gradient as the per-example
    values summed (the sum's derivative is exactly 1 for each), with two fewer operations
    per step (the separate sum and its backward), which count on a launch-bound GPU step.
    """
    if objective is cross_entropy:
        return lambda logits, labels: F.cross_entropy(logits, labels, reduction="sum")
    return lambda logits, labels: objective(logits, labels).sum()


def get_objective(name: str) -> Objective:
    """Look up an objective by name."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise DefpertError(
            f"unknown loss {name!r}; choose one of: {', '.join(OBJECTIVES)}"
        ) from None
