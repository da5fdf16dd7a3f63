"""The strong suite: the worst case per example over a cascade of attacks, in three tiers.

Each attack runs only on the examples still classified correctly (AutoAttack's cascade),
and a point found earlier (e.g. by the weak attack) is kept, so the strong accuracy never
exceeds the weak one on the same examples.

* ``quick``: APGD-CE, APGD-T (3 target classes), Square with 1,000 queries: a screen for
  tests and first looks, not a robustness claim.
* ``standard`` (default): AutoAttack's standard version, APGD-CE, APGD-T (9 targets),
  FAB-T (9 targets), Square with 5,000 queries, plus PGD-100 with cross-entropy and with
  the CW margin (one run from the clean input, then random restarts).
* ``plus``: ``standard`` with AutoAttack's plus additions: APGD-CE and APGD-DLR with 5
  restarts, untargeted FAB with 5 restarts, Square with 5 restarts, PGD with 5 restarts.

Every random draw comes from one generator seeded by ``seed``; no global RNG is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from defpert.attacks._common import project
from defpert.attacks.apgd import apgd
from defpert.attacks.cascade import Cascade, Stage
from defpert.attacks.fab import fab
from defpert.attacks.journal import Journal, Resume
from defpert.attacks.pgd import pgd
from defpert.attacks.search import (
    FALLBACK,
    check_search,
    on_contested,
    reseeding,
    resolve_search,
    searcher,
)
from defpert.attacks.square import square
from defpert.core.engine import madry_step_size
from defpert.core.evaluate import correct
from defpert.core.threat import ThreatModel
from defpert.errors import DefpertError
from defpert.runtime.devices import model_device

TIERS = ("quick", "standard", "plus")

# An attack of the cascade: (model, x, y, threat, generator, anchor, resume) -> candidate
# points. ``resume`` (None without a journal) carries the attack's bookmarks, if it leaves any.
Attack = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, ThreatModel, torch.Generator, "torch.Tensor | None",
     "Resume | None"],
    torch.Tensor,
]  # fmt: skip


def check_tier(name: str) -> str:
    """Refuse an unknown tier name in one line."""
    if name not in TIERS:
        raise DefpertError(
            f"unknown strong-attack tier {name!r}; choose one of: {', '.join(TIERS)}"
        )
    return name


@dataclass(frozen=True)
class StrongConfig:
    """The strong suite: a tier, and overrides of its lengths (None: the tier's)."""

    tier: str = "standard"
    steps: int = 100  # PGD, APGD and FAB iterations
    restarts: int | None = None  # PGD runs per loss: 1 from the clean input, then random starts
    square_queries: int | None = None
    batch_size: int | None = None  # None: the engine's default chunk for the device
    search: str = "fp32"  # the attacks' arithmetic: fp32, bf16 or auto (attacks.search)

    def __post_init__(self) -> None:
        check_tier(self.tier)
        check_search(self.search)
        for name in ("steps", "restarts", "square_queries", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DefpertError(f"strong suite: {name} must be at least 1, got {value}")

    @property
    def queries(self) -> int:
        return self.square_queries or (1000 if self.tier == "quick" else 5000)

    def plan(self) -> list[tuple[str, Attack]]:
        """The cascade, in order: (name, attack)."""
        steps, bs, q = self.steps, self.batch_size, self.queries
        plus = self.tier == "plus"
        many = 5 if plus else 1

        def pgd_attack(loss: str) -> Attack:
            runs = self.restarts or (5 if plus else 2)

            def run(m: nn.Module, x: torch.Tensor, y: torch.Tensor, t: ThreatModel,
                    g: torch.Generator, a: torch.Tensor | None, r: Resume | None) -> torch.Tensor:  # fmt: skip
                return _pgd_restarts(m, x, y, t, g, steps, loss, runs, bs, a)

            return run

        def apgd_attack(loss: str, restarts: int = 1, targets: int = 9) -> Attack:
            return lambda m, x, y, t, g, a, r: apgd(m, x, y, threat=t, steps=steps, loss=loss,
                                                    restarts=restarts, targets=targets, generator=g,
                                                    batch_size=bs, anchor=a, resume=r)  # fmt: skip

        def fab_attack(targeted: bool, restarts: int = 1) -> Attack:
            return lambda m, x, y, t, g, a, r: fab(m, x, y, threat=t, steps=steps, targeted=targeted,
                                                restarts=restarts, generator=g, batch_size=bs,
                                                anchor=a, resume=r)  # fmt: skip

        def square_attack(restarts: int) -> Attack:
            return lambda m, x, y, t, g, a, r: square(m, x, y, threat=t, queries=q,
                                                   restarts=restarts, generator=g, anchor=a,
                                                   resume=r)  # fmt: skip

        if self.tier == "quick":
            return [("apgd-ce", apgd_attack("ce")),
                    ("apgd-t", apgd_attack("dlr-targeted", targets=3)),
                    (f"square-{q}", square_attack(1))]  # fmt: skip
        plan: list[tuple[str, Attack]] = [("apgd-ce", apgd_attack("ce", many))]
        if plus:
            plan.append(("apgd-dlr", apgd_attack("dlr", many)))
        plan += [("apgd-t", apgd_attack("dlr-targeted")),
                 (f"pgd-ce-{steps}", pgd_attack("ce")),
                 (f"pgd-margin-{steps}", pgd_attack("margin")),
                 ("fab-t", fab_attack(True))]  # fmt: skip
        if plus:
            plan.append(("fab", fab_attack(False, many)))
        plan.append((f"square-{q}", square_attack(many)))
        return plan

    def describe(self) -> dict[str, Any]:
        """The suite as data, for JSON and the report: the tier, lengths and attack names."""
        return {**asdict(self), "square_queries": self.queries,
                "attacks": [name for name, _ in self.plan()]}  # fmt: skip


def _pgd_restarts(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, g: torch.Generator,
    steps: int, loss: str, runs: int, batch_size: int | None, anchor: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """PGD from the clean input, then from random starts, each on the examples still unbroken."""
    best = x.clone()
    unbroken = correct(model, x, y)
    for run in range(runs):
        idx = unbroken.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        cand = pgd(model, x[idx], y[idx], threat=threat, steps=steps,
                   step_size=madry_step_size(threat.eps, steps), loss=loss,
                   random_start=run > 0, generator=g, batch_size=batch_size,
                   anchor=anchor[idx] if anchor is not None else None)  # fmt: skip
        best[idx] = cand
        unbroken[idx] = correct(model, cand, y[idx])
    return best


@dataclass
class StrongResult:
    """Worst case over the suite: the adversarial inputs, which examples survived, and how."""

    adversarial: torch.Tensor
    robust: torch.Tensor  # (N,) bool: still correct after every attack
    broken_by: dict[str, int] = field(default_factory=dict)  # attack name -> newly broken
    max_perturbation: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)  # attack name -> wall time
    search: str = "fp32"  # the arithmetic the attacks searched in (verdicts: always fp32)
    contested: int = 0  # examples a bf16 search claimed and the fp32 verdict refused

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")


def strong_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    config: StrongConfig | None = None,
    seed: int = 0,
    known_adversarial: list[torch.Tensor] | dict[str, torch.Tensor] | None = None,
    progress: bool = False,
    anchor: torch.Tensor | None = None,
    journal: Journal | None = None,
) -> StrongResult:
    """Worst case per example over the tier's cascade (see the module docstring).

    ``known_adversarial`` are candidates found earlier (e.g. by the weak attack; a dict
    names each in ``broken_by``); an example they already break counts as broken. Candidates are re-projected onto the ball and the
    box before they count, so no point outside the threat model is ever reported. With an
    ``anchor`` (the natural images of defended inputs ``x``), a point must also lie within
    eps of the anchor: the budget measured from the natural image as well. Gradient attacks
    and Square search inside that intersection; FAB keeps its iterates that still fool the
    model once projected into it.
    A ``journal`` receives the cascade's state after each attack and, when it holds the
    state of an interrupted run of the same cascade, the run continues from there.
    The config's ``search`` is the arithmetic the attacks search in (``fp32``, ``bf16``, or
    ``auto``: bf16 where the device has it natively); every verdict is the float32 model's,
    and examples a bf16 search claimed but did not break get the float32 cascade
    (:mod:`defpert.attacks.search`).
    """
    cfg = config or StrongConfig()
    search = resolve_search(cfg.search, model_device(model))
    seeker = searcher(model, search)
    x, y = x.detach().cpu(), y.detach().cpu()
    anchor = anchor.detach().cpu() if anchor is not None else None
    robust = correct(model, x, y)
    cascade = Cascade(robust, x.clone(), torch.Generator().manual_seed(seed),
                      broken_by={"clean": int((~robust).sum())},
                      contested=torch.zeros(len(y), dtype=torch.bool) if search != "fp32" else None)  # fmt: skip

    def absorb(name: str, candidate: torch.Tensor, idx: torch.Tensor) -> None:
        candidate = project(threat, x[idx], candidate, anchor[idx] if anchor is not None else None)
        still = correct(model, candidate, y[idx])
        newly = idx[~still]
        cascade.points[newly] = candidate[~still]
        cascade.robust[newly] = False
        cascade.broken_by[name] = cascade.broken_by.get(name, 0) + len(newly)
        if cascade.contested is not None and not name.startswith(FALLBACK):
            claimed = ~correct(seeker, candidate, y[idx])
            cascade.contested[idx[claimed & still]] = True

    def stage(attack: Attack, net: nn.Module) -> Stage:
        return lambda idx, r: attack(net, x[idx], y[idx], threat, cascade.generator,
                                     anchor[idx] if anchor is not None else None, r)  # fmt: skip

    plan = [(name, stage(attack, seeker)) for name, attack in cfg.plan()]
    if cascade.contested is not None:
        plan += _fallback(cfg, stage, model, cascade, x, seed)
    if not cascade.resume(journal, x, [name for name, _ in plan]):
        known = known_adversarial or {}
        if not isinstance(known, dict):
            known = {f"given[{i}]" if i else "weak": cand for i, cand in enumerate(known)}
        for name, cand in known.items():
            idx = cascade.robust.nonzero().squeeze(1)
            absorb(name, cand[idx], idx)
    cascade.run(plan, absorb, journal, progress=progress, desc=f"strong ({cfg.tier})")
    worst, robust = cascade.points, cascade.robust
    broken_by, seconds = cascade.broken_by, cascade.seconds
    size = threat.size(worst - x)
    contested = int(cascade.contested.sum()) if cascade.contested is not None else 0
    return StrongResult(worst, robust, broken_by, float(size.max()) if len(size) else 0.0, seconds,
                        search, contested)  # fmt: skip


def _fallback(
    cfg: StrongConfig,
    stage: Callable[[Attack, nn.Module], Stage],
    model: nn.Module,
    cascade: Cascade,
    x: torch.Tensor,
    seed: int,
) -> list[tuple[str, Stage]]:
    """The float32 cascade after a bfloat16 search, drawing from the suite's seed again: its
    first attack (APGD-CE) on every example still standing, the rest on the contested ones
    (so where every example is contested it is the float32 suite).

    Contested examples alone are not enough: a bfloat16 gradient that is merely weaker
    claims nothing, so nothing is contested and the float32 search never looks. On a
    standard cnn (L-inf 0.1, n = 500) the bfloat16 APGD-CE broke 15 fewer examples than the
    float32 one and the suite ended 1.0 point more optimistic (docs/results/speed.md); the
    float32 APGD-CE on every survivor is the cheapest attack of the suite (about 2 % of its
    time) and the one that breaks most."""
    stages = []
    for i, (name, attack) in enumerate(cfg.plan()):
        assert cascade.contested is not None
        run = stage(attack, model)
        if i > 0:
            run = on_contested(run, cascade.contested, x)
        else:
            run = reseeding(run, cascade.generator, seed)
        stages.append((FALLBACK + name, run))
    return stages
