"""Defensive perturbations: the engine run in the defender's direction.

Proactive methods know the true label (the data owner perturbs before release; the
original study's setting):

* ``ce`` descends cross-entropy to the true label (the original's method);
* ``margin`` descends the CW logit margin (does not saturate on confident inputs);
* ``robustify`` (Moon et al., AAAI 2022, "Preemptive Image Robustification") descends
  the *worst-case* loss within the attacker's ball: the gradient is taken at an inner PGD
  attack's point (random start; Danskin's theorem) and averaged over its restarts, so the
  defended point is robust to the attack rather than merely confident.
* ``robustify-label-free`` is the same with the model's prediction in place of the true
  label: what an uploader without labels can run.

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

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from defpert.core.engine import RowsProgress, Schedule, madry_step_size, perturb, perturb_batch
from defpert.core.evaluate import predict
from defpert.core.objectives import Objective, cross_entropy, get_objective
from defpert.core.threat import ThreatModel
from defpert.defenses import registry
from defpert.defenses.registry import DefenseSpec
from defpert.errors import DefpertError


@dataclass(frozen=True)
class Defense:
    """A defensive perturbation method and its budget."""

    method: str
    threat: ThreatModel
    steps: int
    step_size: float
    # robustify only: the inner attack (PGD with a random start in the attacker's ball,
    # default: the defense's own ball), its restarts averaged, the outer optimizer
    inner_steps: int = 10
    inner_restarts: int = 1
    warm_start: bool = False  # start each inner attack where the last outer step's ended
    optimizer: str = "steepest"
    attack_threat: ThreatModel | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        registry.get(self.method)  # an unknown name is refused in one line
        Schedule(self.steps, self.step_size, optimizer=self.optimizer)  # validates
        if self.inner_steps < 1:
            raise DefpertError(f"--inner-steps must be at least 1, got {self.inner_steps}")
        if self.inner_restarts < 1:
            raise DefpertError(f"--inner-restarts must be at least 1, got {self.inner_restarts}")

    @property
    def spec(self) -> DefenseSpec:
        """The method's registry entry: what it is, whatever its budget."""
        return registry.get(self.method)

    @property
    def reactive(self) -> bool:
        return self.spec.reactive

    @property
    def objective(self) -> Objective:
        """What the method optimises (descends, or ascends where its entry says so)."""
        return get_objective(self.spec.objective)

    def reactive_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """The labels a reactive method uses: the model's prediction (hedge ignores them)."""
        return logits.argmax(1)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.steps, self.step_size, ascend=self.spec.ascend,
                        optimizer=self.optimizer)  # fmt: skip

    @property
    def passes_per_step(self) -> int:
        """Forward-backward passes per outer step (per image)."""
        if not self.spec.inner_attack:
            return 1
        return 1 + self.inner_restarts * self.inner_steps

    def wrap(self, model: nn.Module, mode: str = "unrolled") -> DefendedModel:
        """This reactive defense and ``model`` as one module (see :class:`DefendedModel`)."""
        return DefendedModel(model, self, mode=mode)

    def inner_attack(self) -> InnerAttack | None:
        """The attack whose point the robustifying defense descends from (None for others)."""
        if not self.spec.inner_attack:
            return None
        threat = self.attack_threat or self.threat
        steps = self.inner_steps
        schedule = Schedule(steps, madry_step_size(threat.eps, steps), noise_floor=1e-6)
        return InnerAttack(threat, schedule,
                           restarts=self.inner_restarts, warm_start=self.warm_start,
                           seed=self.seed)  # fmt: skip


@dataclass(frozen=True)
class InnerAttack:
    """PGD with random starts from the current point: the robustifying defense's worst case.

    Returns (restarts, B, C, H, W) points. With ``warm_start`` every outer step after the
    first continues from the previous inner attack's offsets instead of a fresh random
    start. Each example draws its random starts from its own generator, seeded by ``seed``
    and the example's position (:meth:`for_chunk` gives a chunk's first position), so the
    result depends neither on the chunk size nor on the number of processes; gradient
    components at float-rounding level take no step (``Schedule.noise_floor``), so a
    rounding difference between chunk sizes cannot send a pixel across the ball.
    """

    threat: ThreatModel
    schedule: Schedule
    restarts: int = 1
    warm_start: bool = False
    seed: int = 0
    first_index: int = 0
    _generators: list[torch.Generator] = field(default_factory=list, compare=False, repr=False)

    def for_chunk(self, first_index: int) -> InnerAttack:
        """A copy for the chunk whose first example is at ``first_index``."""
        return replace(self, first_index=first_index, _generators=[])

    def __call__(
        self,
        model: nn.Module,
        point: torch.Tensor,
        labels: torch.Tensor,
        previous: torch.Tensor | None,
    ) -> torch.Tensor:
        k, b = self.restarts, len(point)
        if previous is not None and self.warm_start:
            start = previous.flatten(0, 1)
        else:
            shape = torch.Size((k, *point.shape[1:]))
            start = torch.stack([self.threat.random_init(shape, g) for g in self._streams(b)], 1)
            start = start.flatten(0, 1).to(point.device)
        found = perturb_batch(
            model, point.repeat(k, 1, 1, 1), labels.repeat(k), threat=self.threat,
            objective=cross_entropy, schedule=self.schedule, delta0=start,
        )  # fmt: skip
        return found.view(k, b, *point.shape[1:])

    def _streams(self, count: int) -> list[torch.Generator]:
        """One generator per example, created at the first call and advanced after it."""
        if len(self._generators) != count:
            base = self.seed * 1_000_003 + self.first_index
            self._generators[:] = [torch.Generator().manual_seed(base + i) for i in range(count)]
        return self._generators


def defend(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    defense: Defense,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
    saved: RowsProgress | None = None,
) -> torch.Tensor:
    """Apply a defensive perturbation to ``x`` (N, C, H, W); returns the defensive inputs.

    Label-aware methods need the true labels ``y``; label-free ones (``uses_label`` false in
    their registry entry) never read them and use the model's prediction. ``saved`` keeps the finished rows, so
    that an interrupted defense continues where it stopped (see :func:`perturb`).
    """
    method = defense.method
    if not defense.spec.uses_label:
        labels = predict(model, x)  # what a label-free method sees instead of the true label
    else:
        if y is None:
            raise DefpertError(f"defense {method!r} needs the true labels")
        labels = y
    return perturb(
        model, x, labels, threat=defense.threat, objective=defense.objective, schedule=defense.schedule,
        batch_size=batch_size, inner=defense.inner_attack(),
        progress=progress, desc=f"defense-{method}", precision=precision, saved=saved,
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
