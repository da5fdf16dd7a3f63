"""The adaptive attack on a test-time (reactive) defense, after Croce et al. (ICML 2022,
"Evaluating the adversarial robustness of adaptive test-time defenses").

A reactive defense optimises every input at test time, so it is part of the model, and its
robustness is the worst case per example over attacks *through* it. The cascade, each
stage run only on the examples the defended model still classifies correctly:

1. ``clean``: the unperturbed input (a defense can break clean points by itself);
2. transfer: points found against the bare model (the weak attack's, the strong suite's),
   passed through the defense;
3. deep transfer: the bare model's attacks run to their end (the last iterates of PGD on
   cross-entropy and on the CW margin, APGD-CE's and APGD-DLR's highest-loss points,
   APGD-CE's last misclassified iterate, and
   PGD on the CW margin capped at ``kappa``, each from several starts), passed through the
   defense. A first point across the boundary, which the strong suite keeps, is the right
   verdict on the bare model and the wrong candidate here: a defense that moves points a
   little pulls it back, while a point deep in a wrong class stays there. On a one-epoch
   MNIST ``cnn`` behind ``hedge`` (L-inf 0.2, first 200 test images) the strong suite's
   first crossings broke 157 of 200 through the defense and the same attacks' deepest
   points 198 (experiments/results/adaptive-depth-*.json);
4. BPDA (Athalye et al., 2018): the defense is run in the forward pass and treated as the
   identity in the backward pass, with PGD on the CW margin and APGD on cross-entropy and
   DLR, each with random restarts and EOT over the defense's randomness (defpert's
   defenses have none, so EOT draws one sample and says so), and PGD on cross-entropy;
5. ``unrolled``: PGD on cross-entropy and on the CW margin differentiating through every
   defense step (for L-inf through a straight-through sign, whose true derivative is zero);
6. Square through the defense: black-box, so it needs no gradient of the defense at all.

Every candidate is classified by the exact defended model (defense, then classifier).
Any reactive defense works: one of the registry's (:class:`defpert.defenses.methods.Defense`) or
any object whose ``wrap(model, mode)`` gives the defended classifier (``mode`` ``"bpda"``:
the exact defense forward, the identity backward; ``"unrolled"``: differentiable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from defpert.attacks._common import project
from defpert.attacks.apgd import apgd
from defpert.attacks.cascade import Cascade, Stage
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
from defpert.core.engine import Schedule, madry_step_size, perturb
from defpert.core.evaluate import correct
from defpert.core.objectives import capped_margin, cross_entropy, margin
from defpert.core.threat import ThreatModel
from defpert.errors import DefpertError
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import model_device

# The unrolled defense keeps every one of its steps' graphs: small chunks keep memory flat.
# (Elsewhere a defended forward pass is a run of the classifier's passes, chunked as the
# engine's, at the size measured for the classifier on this machine.)
UNROLLED_CHUNK = 16
# Examples that share each of Square's random windows: fixed, so its draws are the same on
# every machine.
SQUARE_GROUP = 256


class Reactive(Protocol):
    """A test-time defense the adaptive attack can go through."""

    def wrap(self, model: nn.Module, mode: str) -> nn.Module:
        """The defended classifier; ``mode`` is ``"bpda"`` or ``"unrolled"``."""
        ...


# The CW confidence of the deep candidates: on the one-epoch MNIST cnn behind hedge (L-inf
# 0.2, n = 200) points capped at kappa = 0, 1, 2 and 5 broke 29, 150, 180 and 186 through
# the defense, and every kappa from 5 to 50 the same 186; 10 sits inside that plateau
# (experiments/results/adaptive-depth-hedge-cnn-e1-linf0.2-n200.json).
DEEP_KAPPA = 10.0


@dataclass(frozen=True)
class AdaptiveConfig:
    """Lengths of the adaptive attack's stages."""

    steps: int = 100  # BPDA PGD and APGD iterations, and the deep candidates' attacks
    restarts: int = 2  # APGD runs per loss (random starts)
    eot: int = 1  # gradient samples per step; >1 only helps against a randomised defense
    unrolled_steps: int = 20
    unrolled_step_size: float | None = None  # None: Madry's rule for unrolled_steps
    square_queries: int = 5000  # 0 skips the black-box stage
    deep_restarts: int = 2  # runs of each deep candidate's attack (PGD: the first from x)
    kappa: float = DEEP_KAPPA  # the capped margin's confidence
    search: str = "fp32"  # the attacks' arithmetic: fp32, bf16 or auto (attacks.search)

    def __post_init__(self) -> None:
        for name in ("steps", "restarts", "eot", "unrolled_steps"):
            if getattr(self, name) < 1:
                raise DefpertError(f"adaptive attack: {name} must be at least 1")
        if self.square_queries < 0:
            raise DefpertError("adaptive attack: square_queries must be 0 or more")
        if self.deep_restarts < 0:
            raise DefpertError("adaptive attack: deep_restarts must be 0 or more")
        if not self.kappa >= 0:
            raise DefpertError("adaptive attack: kappa must be 0 or more")
        check_search(self.search)


def adaptive_attack(
    model: nn.Module,
    defense: Reactive,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    known: dict[str, torch.Tensor] | None = None,
    config: AdaptiveConfig | None = None,
    seed: int = 0,
    journal: Journal | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Worst case per example through ``defense`` (see the module docstring).

    ``known`` maps a name to points (N, C, H, W) found against the bare model. Returns
    ``{"accuracy", "n", "robust" (list of bools), "broken_by", "seconds", "config"}``. A
    ``journal`` keeps the cascade's state after each stage and the APGD and Square stages'
    bookmarks inside them; a rerun continues from it. The config's ``search`` is the
    arithmetic the attacks search in (as for the strong suite: every verdict is the float32 defended model's,
    and the float32 stages run again on what a bf16 search claimed and did not break).
    """
    cfg = config or AdaptiveConfig()
    search = resolve_search(cfg.search, model_device(model))
    x, y = x.detach().cpu(), y.detach().cpu()
    chunk = chunk_size(model, tuple(x.shape[1:]), model_device(model))
    exact = defense.wrap(model, "bpda")  # its forward pass is the exact defense
    # no points are kept (the verdict is the defended model's): the inputs stand in for them
    cascade = Cascade(torch.ones(len(y), dtype=torch.bool), x, torch.Generator().manual_seed(seed),
                      contested=torch.zeros(len(y), dtype=torch.bool) if search != "fp32" else None)  # fmt: skip
    generator = cascade.generator
    claims = defense.wrap(searcher(model, search), "bpda")  # the defended model as searched

    def absorb(name: str, candidate: torch.Tensor, idx: torch.Tensor) -> None:
        candidate = project(threat, x[idx], candidate)
        still = correct(exact, candidate, y[idx], batch_size=chunk)
        cascade.robust[idx[~still]] = False
        cascade.broken_by[name] = cascade.broken_by.get(name, 0) + int((~still).sum())
        searched = name not in given and not name.startswith(FALLBACK)
        if cascade.contested is not None and searched and still.any():
            claimed = ~correct(claims, candidate[still], y[idx][still], batch_size=chunk)
            cascade.contested[idx[still][claimed]] = True

    stages: list[tuple[str, Any]] = [("clean", lambda xi, yi, r: xi)]
    for name, points in (known or {}).items():
        stages.append((f"transfer-{name}", _rows_of(points)))
    given = {name for name, _ in stages}  # judged, not searched
    stages += _search_stages(searcher(model, search), defense, threat, cfg, generator, chunk)
    plan: list[tuple[str, Stage]] = [
        (name, run.stage if isinstance(run, _rows_of) else _on_rows(run, x, y))
        for name, run in stages
    ]
    if cascade.contested is not None:
        fallback = _search_stages(model, defense, threat, cfg, generator, chunk)
        for i, (name, run) in enumerate(fallback):
            stage = on_contested(_on_rows(run, x, y), cascade.contested, x)
            plan.append((FALLBACK + name, reseeding(stage, generator, seed) if i == 0 else stage))
    cascade.resume(journal, x, [name for name, _ in plan])
    cascade.run(plan, absorb, journal, progress=progress, desc="adaptive")
    robust, broken_by, seconds = cascade.robust, cascade.broken_by, cascade.seconds
    unrolled_step = cfg.unrolled_step_size or madry_step_size(threat.eps, cfg.unrolled_steps)
    searched: dict[str, Any] = {"search": search} if search != "fp32" else {}
    if cascade.contested is not None:
        searched["contested"] = int(cascade.contested.sum())
    return {
        "accuracy": float(robust.float().mean()) if len(robust) else float("nan"),
        "n": len(y),
        "robust": robust.tolist(),
        "broken_by": broken_by,
        "seconds": seconds,
        **searched,
        "config": {
            **asdict(cfg),
            "unrolled_step_size": unrolled_step,
            "eot_note": "the defense is deterministic: one EOT sample"
            if cfg.eot == 1
            else f"{cfg.eot} EOT samples",
        },  # fmt: skip
    }


def _search_stages(
    net: nn.Module,
    defense: Reactive,
    threat: ThreatModel,
    cfg: AdaptiveConfig,
    generator: torch.Generator,
    chunk: int,
) -> list[tuple[str, Any]]:
    """The stages that search, with ``net`` (the model, or the model as searched in bf16):
    the deep candidates, BPDA, the unrolled defense and Square through it."""
    bpda = defense.wrap(net, "bpda")
    unrolled = defense.wrap(net, "unrolled")
    unrolled_step = cfg.unrolled_step_size or madry_step_size(threat.eps, cfg.unrolled_steps)
    step = madry_step_size(threat.eps, cfg.steps)
    stages = _deep_stages(net, threat, cfg, generator, chunk)
    stages += [
        ("bpda-pgd-ce", lambda xi, yi, r: pgd(
            bpda, xi, yi, threat=threat, steps=cfg.steps, step_size=step, loss="ce",
            batch_size=chunk)),
        ("bpda-pgd-margin", lambda xi, yi, r: pgd(
            bpda, xi, yi, threat=threat, steps=cfg.steps, step_size=step, loss="margin",
            batch_size=chunk)),
        ("bpda-apgd-ce", lambda xi, yi, r: apgd(
            bpda, xi, yi, threat=threat, steps=cfg.steps, loss="ce", restarts=cfg.restarts,
            eot=cfg.eot, generator=generator, batch_size=chunk, resume=r)),
        ("bpda-apgd-dlr", lambda xi, yi, r: apgd(
            bpda, xi, yi, threat=threat, steps=cfg.steps, loss="dlr", restarts=cfg.restarts,
            eot=cfg.eot, generator=generator, batch_size=chunk, resume=r)),
        ("unrolled", lambda xi, yi, r: pgd(
            unrolled, xi, yi, threat=threat, steps=cfg.unrolled_steps, step_size=unrolled_step,
            loss="ce", batch_size=UNROLLED_CHUNK)),
        ("unrolled-margin", lambda xi, yi, r: pgd(
            unrolled, xi, yi, threat=threat, steps=cfg.unrolled_steps, step_size=unrolled_step,
            loss="margin", batch_size=UNROLLED_CHUNK)),
    ]  # fmt: skip
    if cfg.square_queries:
        stages.append((f"square-{cfg.square_queries}", lambda xi, yi, r: square(
            bpda, xi, yi, threat=threat, queries=cfg.square_queries, generator=generator,
            batch_size=SQUARE_GROUP, forward_chunk=chunk, resume=r)))  # fmt: skip
    return stages


def _deep_stages(
    model: nn.Module,
    threat: ThreatModel,
    cfg: AdaptiveConfig,
    generator: torch.Generator,
    chunk: int,
) -> list[tuple[str, Any]]:
    """The deep candidates: the bare model's attacks run to their end, one stage per run, so
    that every run is judged through the defense and the next one attacks only the examples
    still standing. PGD's first run starts at the input, every other run (and every APGD
    run) at a random point of the ball, drawn from the cascade's generator."""
    step = madry_step_size(threat.eps, cfg.steps)

    def pgd_run(objective: Any, run: int) -> Any:
        schedule = Schedule(cfg.steps, step, ascend=True, random_start=run > 0)
        return lambda xi, yi, r: perturb(model, xi, yi, threat=threat, objective=objective,
                                         schedule=schedule, generator=generator,
                                         batch_size=chunk, desc="deep")  # fmt: skip

    def apgd_run(loss: str, keep: str = "highest") -> Any:
        return lambda xi, yi, r: apgd(model, xi, yi, threat=threat, steps=cfg.steps, loss=loss,
                                      generator=generator, batch_size=chunk, keep=keep)  # fmt: skip

    kinds: list[tuple[str, Any]] = [
        ("apgd-ce", lambda run: apgd_run("ce")),
        (f"pgd-ce-{cfg.steps}", lambda run: pgd_run(cross_entropy, run)),
        (f"pgd-margin-{cfg.steps}", lambda run: pgd_run(margin, run)),
        ("apgd-dlr", lambda run: apgd_run("dlr")),
        ("apgd-ce-last", lambda run: apgd_run("ce", "last-broken")),
        (f"cw-kappa-{cfg.kappa:g}", lambda run: pgd_run(capped_margin(cfg.kappa), run)),
    ]
    return [
        (f"deep-{name}" + (f"-run{run + 1}" if run else ""), make(run))
        for run in range(cfg.deep_restarts)
        for name, make in kinds
    ]


class _rows_of:  # noqa: N801 - used like a function
    """Known points, looked up by example index rather than recomputed."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points.detach().cpu()

    def stage(self, idx: torch.Tensor, resume: Resume | None) -> torch.Tensor:
        return self.points[idx]


def _on_rows(run: Any, x: torch.Tensor, y: torch.Tensor) -> Stage:
    """A stage ``run(x_rows, y_rows, resume)`` as a cascade stage of example indices."""
    return lambda idx, resume: run(x[idx], y[idx], resume)
