"""Defensive perturbations: the engine run in the defender's direction.

Proactive methods know the true label (the data owner perturbs before release; the
original study's setting):

* ``ce`` descends cross-entropy to the true label (the original's method);
* ``margin`` descends the CW logit margin (does not saturate on confident inputs);
* ``minmax`` descends the loss at an inner PGD attack's point, aiming at robustness to
  the attack rather than at confidence alone.

Reactive methods see no label and are applied to every incoming input, adversarial or
not, so they are part of the model at test time:

* ``anti-adversary`` descends cross-entropy to the model's own prediction;
* ``hedge`` ascends the summed cross-entropy over all classes.

:class:`DefendedModel` wraps a reactive method and a classifier into one ``nn.Module``
so that attacks can be run *through* the defense (adaptive attack): ``unrolled``
differentiates through every defense step, ``bpda`` treats the defense as the identity
in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from defpert.engine import Schedule, madry_step_size, perturb, perturb_batch
from defpert.errors import DefpertError
from defpert.evaluate import predict
from defpert.objectives import Objective, cross_entropy, hedge, margin
from defpert.threat import ThreatModel

PROACTIVE = ("ce", "margin", "minmax")
REACTIVE = ("anti-adversary", "hedge")
DEFENSES = PROACTIVE + REACTIVE
OBJECTIVE_OF: dict[str, Objective] = {"ce": cross_entropy, "margin": margin, "minmax": cross_entropy,
                                      "anti-adversary": cross_entropy, "hedge": hedge}  # fmt: skip


@dataclass(frozen=True)
class Defense:
    """A defensive perturbation method and its budget."""

    method: str
    threat: ThreatModel
    steps: int
    step_size: float
    inner_steps: int = 5  # minmax only: steps of the inner attack

    def __post_init__(self) -> None:
        if self.method not in DEFENSES:
            raise DefpertError(
                f"unknown defense {self.method!r}; choose one of: {', '.join(DEFENSES)}"
            )
        Schedule(self.steps, self.step_size)  # validates

    @property
    def reactive(self) -> bool:
        return self.method in REACTIVE

    @property
    def objective(self) -> Objective:
        """What the method optimises (descends, or ascends for ``hedge``)."""
        return OBJECTIVE_OF[self.method]

    def reactive_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """The labels a reactive method uses: the model's prediction (hedge ignores them)."""
        return logits.argmax(1)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.steps, self.step_size, ascend=self.method == "hedge")

    def _inner(self) -> _InnerAttack:
        steps = self.inner_steps
        return _InnerAttack(self.threat, Schedule(steps, madry_step_size(self.threat.eps, steps)))


@dataclass(frozen=True)
class _InnerAttack:
    """PGD from the current point; gives the min-max defense its evaluation point."""

    threat: ThreatModel
    schedule: Schedule

    def __call__(self, model: nn.Module, point: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return perturb_batch(
            model, point, labels, threat=self.threat, objective=cross_entropy,
            schedule=self.schedule,
        )  # fmt: skip


def defend(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    defense: Defense,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Apply a defensive perturbation to ``x`` (N, C, H, W); returns the defensive inputs.

    Proactive methods need the true labels ``y``; reactive methods ignore them.
    """
    method = defense.method
    if defense.reactive:
        labels = predict(model, x)  # what a reactive method sees instead of the true label
    else:
        if y is None:
            raise DefpertError(f"defense {method!r} is proactive and needs the true labels")
        labels = y
    return perturb(
        model, x, labels, threat=defense.threat, objective=defense.objective, schedule=defense.schedule,
        batch_size=batch_size, inner=defense._inner() if method == "minmax" else None,
        progress=progress, desc=f"defense-{method}", precision=precision,
    )  # fmt: skip


class DefendedModel(nn.Module):
    """A reactive defense followed by the classifier, as one differentiable module.

    ``mode="unrolled"`` keeps the graph of every defense step (an exact adaptive attack,
    costly); ``mode="bpda"`` runs the defense without a graph and passes the gradient
    straight through it (Athalye et al., 2018).
    """

    def __init__(self, model: nn.Module, defense: Defense, mode: str = "unrolled") -> None:
        super().__init__()
        if not defense.reactive:
            raise DefpertError(f"defense {defense.method!r} needs labels and cannot sit in a model")
        if mode not in ("unrolled", "bpda"):
            raise DefpertError(f"unknown mode {mode!r}; use unrolled or bpda")
        self.model = model
        self.defense = defense
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.defense
        with torch.no_grad():
            logits = self.model(x)
        labels = d.reactive_labels(logits)
        objective = d.objective
        if self.mode == "bpda":
            x_def = perturb_batch(self.model, x.detach(), labels, threat=d.threat,
                                  objective=objective, schedule=d.schedule)  # fmt: skip
            return self.model(x + (x_def - x).detach())
        x_def = perturb_batch(self.model, x, labels, threat=d.threat, objective=objective,
                              schedule=d.schedule, create_graph=True)  # fmt: skip
        return self.model(x_def)
