"""RQ1: how much does a defensive perturbation improve accuracy under PGD?

The study behind ``defpert dp``. For one threat model and one or more defenses it
measures, on the same examples:

1. accuracy on the original data, clean and under the weak attack (the original's PGD);
2. accuracy on the defensive data, clean and under the same attack;
3. both attacked accuracies again under the strong worst-case suite;
4. for reactive defenses: the defense applied to adversarial inputs, and an adaptive
   attack through the defense (worst case of: the weak and strong attacks' points passed
   through it, BPDA, the unrolled defense).

Every data version is saved as ``.npz`` (images, labels) under the run directory.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defpert.attacks import StrongConfig, StrongResult, pgd, strong_attack
from defpert.attacks.adaptive import adaptive_attack
from defpert.attacks.journal import CascadeState
from defpert.attacks.undo import undo_then_attack
from defpert.core.evaluate import accuracy, correct
from defpert.core.passes import counting
from defpert.data.datasets import SPLITS, Split
from defpert.defenses.methods import Defense, defend
from defpert.errors import DefpertError
from defpert.models.checkpoint import environment
from defpert.results import DefenseResult, Measured, read
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import model_device, native_bf16
from defpert.runtime.rundir import write_json
from defpert.study.config import DPConfig
from defpert.study.layout import RunLayout, piece
from defpert.study.store import RowsJournal, Store, weights_digest
from defpert.wording import PairedDifference, aligned, count

Report = Callable[[str], None]

__all__ = ["DPConfig", "format_table", "run_dp"]


def _resumed_at(state: CascadeState, config: StrongConfig) -> str:
    """Where an interrupted strong attack goes on: after the attacks it finished, and inside
    the one it had begun (from that attack's last bookmark)."""
    parts = [f"after {', '.join(state.done)}"] if state.done else []
    if state.running is not None:
        names = [name for name, _ in config.plan()]
        running = names[len(state.done)] if len(state.done) < len(names) else "the next attack"
        parts.append(f"inside {running} from its last bookmark")
    return " and ".join(parts)


def _strong_summary(result: StrongResult, natural: torch.Tensor, threat: Any) -> dict[str, Any]:
    return {"accuracy": result.accuracy, "broken_by": result.broken_by,
            "max_perturbation": result.max_perturbation, "seconds": result.seconds,
            "max_from_natural": float(threat.size(result.adversarial - natural).max())
            if len(natural) else 0.0, "search": result.search,
            "robust": result.robust.tolist(),
            **({"contested": result.contested} if result.search != "fp32" else {})}  # fmt: skip


def _paired(defended: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any] | None:
    """A defense's verdicts against the bare model's strong-suite verdicts on the same first
    examples (defended minus bare, with its paired 95 % interval); None for a record saved
    without its verdicts."""
    first, second = defended.get("robust"), bare.get("robust")
    if not isinstance(first, list) or not isinstance(second, list) or len(first) > len(second):
        return None
    return PairedDifference.of(first, second[: len(first)]).as_json()


def run_dp(
    model: nn.Module,
    data: Split,
    config: DPConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    split_name: str = "test",
    progress: bool = False,
    report: Report | None = None,
    lend_from: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the RQ1 study on ``data``; return one result dict per defense (the ``--json`` form).

    With ``out``, every data version and strong/adaptive result is saved as it completes;
    a rerun (after an interruption) reuses them and ends with the same results.
    ``lend_from`` names another run directory whose shared pieces (the original data,
    attacked weakly and strongly) are copied when they were computed with the same
    attacks, data and weights.

    The stages, in order: :meth:`_DPRun.attack_original` (the weak attack),
    :meth:`_DPRun.strong_original` (the strong suite on the bare model), then per defense
    :meth:`_DPRun.defend` and :meth:`_DPRun.attack_proactive` or
    :meth:`_DPRun.attack_reactive`.
    """
    config.validate()
    if split_name not in SPLITS:
        raise DefpertError(f"unknown split {split_name!r}; choose one of: {', '.join(SPLITS)}")
    say: Report = report or (lambda _m: None)
    requested = config.precision
    auto_check: dict[str, Any] = {}
    if requested == "auto":
        config, auto_check = _resolve_auto_precision(model, data.images, data.labels, config, say)
    dp = _DPRun(model, data, config, Path(out) if out is not None else None, split_name,
                progress, say)  # fmt: skip
    dp.open_store(lend_from)
    started = time.perf_counter()
    dp.attack_original()
    precision_check = auto_check or (
        _precision_check(model, dp.x, dp.y, config, say) if config.precision != "fp32" else {}
    )
    if config.strong:
        dp.strong_original()
    results = []
    for method in config.defenses:
        defense = config.defense(method)
        acc, x_def = dp.defend(method, defense)
        strong_info = dp.strong_info()
        if defense.reactive:
            acc_more, adaptive_info = dp.attack_reactive(method, defense)
            distance: dict[str, float] = {}
        else:
            acc_more, distance = dp.attack_proactive(method, defense, x_def, strong_info)
            adaptive_info = {}
        results.append(dp.result(method, defense, {**acc, **acc_more}, distance, strong_info,
                                 adaptive_info, {"name": config.precision, "requested": requested,
                                                 **precision_check}))  # fmt: skip
    elapsed = time.perf_counter() - started
    for r in results:
        r["seconds_total"] = elapsed
    if dp.run is not None:
        write_json(RunLayout(dp.run, split_name).metrics,
                   {"results": results, "config": asdict(config),
                    "environment": environment(model_device(model))})  # fmt: skip
    return results


class _DPRun:
    """One ``dp`` study on one split: its model, data, settings and result store, and its
    stages as methods (each one a piece a reader can follow on its own)."""

    def __init__(self, model: nn.Module, data: Split, config: DPConfig, run: Path | None,
                 split_name: str, progress: bool, say: Report) -> None:  # fmt: skip
        self.model, self.data, self.config, self.run = model, data, config, run
        self.split_name, self.progress, self.say = split_name, progress, say
        self.threat = config.threat()
        self.x, self.y = data.images, data.labels
        self.bs = config.batch_size
        # An attack on a defended point measures its budget from it (man-in-the-middle), or
        # with --budget-from original from the natural image as well.
        self.natural = self.x if config.budget_from == "original" else None
        self.n_strong = min(config.strong_limit, len(self.x))
        self.strong_cfg = config.strong_config()
        self.kept: dict[str, torch.Tensor] = {}
        self.original_strong: dict[str, Any] | None = None
        self.x_strong: torch.Tensor | None = None
        # store name -> {"n", "forward", "backward"}: passes of the classifier per example
        self.passes: dict[str, dict[str, Any]] = {}

    # -- the store -----------------------------------------------------------------------

    def open_store(self, lend_from: str | os.PathLike[str] | None) -> None:
        """The result store, fingerprinted by the settings, data and weights; what an earlier
        (or a lending) run finished is reused."""
        config, x, y = self.config, self.x, self.y
        shared = {k: v for k, v in asdict(config).items() if k not in DEFENSE_FIELDS}
        fingerprint = {"config": shared, "dataset": self.data.spec.name, "n": len(x),
                       "data_sha256": hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest(),
                       "weights_sha256": weights_digest(self.model)}  # fmt: skip
        self.store = Store(self.run, self.split_name, y, fingerprint, say=self.say)
        for method in config.defenses:
            self.store.for_defense(method, {"method": method,
                                            **{k: getattr(config, k) for k in DEFENSE_FIELDS if k != "defenses"}})  # fmt: skip
        if lend_from is not None and self.run is not None:
            lent = self.store.adopt(Path(lend_from))
            self.say(f"lent {count(lent, 'finished piece')} of the original data's attacks from {lend_from}"
                     if lent else f"nothing to lend from {lend_from}: its attacks, data, model or code "
                     "differ from this run's")  # fmt: skip
        reused = self.store.finished()
        if reused:
            self.say(f"resuming: {count(reused, 'finished piece')} (data versions, attack results) of "
                     f"an earlier run reused from {self.run}; only the rest is computed")  # fmt: skip

    def resumable(self, name: str, what: str) -> RowsJournal | None:
        """The rows journal of data version ``name``, saying so when it holds progress."""
        journal = self.store.rows_journal(name)
        done = journal.rows_done() if journal is not None else 0
        if done:
            self.say(f"continuing {what} after its first {done:,} examples (saved progress)")
        return journal

    def version(
        self, name: str, compute: Callable[[], torch.Tensor], rows: int | None = None
    ) -> torch.Tensor:
        """The store's data version ``name``; when computed now, its cost in passes of the
        classifier per example is kept for the result."""

        def counted() -> torch.Tensor:
            with counting(self.model) as passes:
                points = compute()
            self.passes[name] = {"n": len(points), **passes.per_example(len(points))}
            self.store.save_cost(name, self.passes[name])
            return points

        points = self.store.version(name, counted, rows)
        if name not in self.passes:
            saved = self.store.cost(name)
            if saved is not None:
                self.passes[name] = saved
        return points

    def record(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The store's result ``name``, with its cost in passes per example inside it (so a
        resumed run reports the cost the saved result had)."""

        def counted() -> dict[str, Any]:
            with counting(self.model) as passes:
                out = compute()
            n = int(out.get("n", self.n_strong))
            return {**out, "passes": {"n": n, **passes.per_example(n)}}

        out = self.store.record(name, counted)
        if "passes" in out:
            self.passes[name] = out["passes"]
        return out

    # -- attacks -------------------------------------------------------------------------

    def weak(self, images: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """The original study's PGD on ``images`` (within eps of ``anchor`` too, if given)."""
        return _weak_attack(self.model, images, self.y, self.config, self.config.precision,
                            anchor, self.progress)  # fmt: skip

    def strong(self, name: str, images: torch.Tensor, known: dict[str, torch.Tensor],
               keep: str = "", anchored: bool = False) -> dict[str, Any]:  # fmt: skip
        """The strong suite on the first ``n_strong`` of ``images`` (journalled as ``name``),
        the ``known`` points counted first; ``keep`` saves its points under that name."""
        journal = self.store.journal(name)
        earlier = journal.read() if journal is not None else None
        if earlier is not None and (earlier.done or earlier.running is not None):
            self.say(
                f"continuing the strong attack {_resumed_at(earlier, self.strong_cfg)} (saved progress)"
            )
        n = self.n_strong
        result = strong_attack(
            self.model, images[:n], self.y[:n], threat=self.threat, config=self.strong_cfg,
            seed=self.config.seed, known_adversarial={k: v[:n] for k, v in known.items()},
            progress=self.progress,
            anchor=self.natural[:n] if anchored and self.natural is not None else None,
            journal=journal,
        )  # fmt: skip
        if keep:  # saved before the summary, so a saved summary always has its points
            self.kept[keep] = result.adversarial
            self.store.save(keep, result.adversarial)
        return _strong_summary(result, self.x[:n], self.threat)

    def on_first(self, images: torch.Tensor, n: int) -> float:
        """The model's accuracy on the first ``n`` of ``images``."""
        if not n:
            return float("nan")
        return float(correct(self.model, images[:n], self.y[:n]).float().mean())

    # -- stages --------------------------------------------------------------------------

    def attack_original(self) -> None:
        """Stage 1: the original data, clean and under the weak attack."""
        threat = self.threat
        self.say(
            f"attacking the original data: PGD-{self.config.steps} {threat.norm} eps={threat.eps}"
        )
        self.store.version("original", lambda: self.x)
        self.x_adv = self.version("adversarial", partial(self.weak, self.x))
        self.acc_original = accuracy(self.model, self.x, self.y)
        self.acc_original_attacked = accuracy(self.model, self.x_adv, self.y)

    def strong_original(self) -> None:
        """Stage 2: the strong suite on the bare model (the weak attack's points counted)."""
        self.say(
            f"strong attack ({self.strong_cfg.tier}) on the original data ({self.n_strong} examples)"
        )
        points = self.store.saved("strong-adversarial", rows=self.n_strong)
        if points is None:  # a summary is reused only with its points
            self.store.discard("strong-original")
        self.original_strong = self.record("strong-original", partial(
            self.strong, "strong-original", self.x, {"weak": self.x_adv}, keep="strong-adversarial"))  # fmt: skip
        self.x_strong = self.kept.get("strong-adversarial", points)

    def defend(self, method: str, defense: Defense) -> tuple[dict[str, float], torch.Tensor]:
        """Stage 3: the defensive perturbation of the original data; the accuracies so far."""
        self.say(
            f"defensive perturbation: {method} ({'reactive' if defense.reactive else 'proactive'})"
        )
        x_def = self.version(piece("defensive", method), partial(
            defend, self.model, self.x, self.y, defense, batch_size=self.bs, progress=self.progress,
            precision=self.config.precision,
            saved=self.resumable(piece("defensive", method), f"the {method} defense")))  # fmt: skip
        acc = {"original": self.acc_original, "original_attacked": self.acc_original_attacked,
               "defensive": accuracy(self.model, x_def, self.y)}  # fmt: skip
        if self.original_strong is not None:
            acc["original_attacked_strong"] = self.original_strong["accuracy"]
        return acc, x_def

    def strong_info(self) -> dict[str, Any]:
        """The strong suite's record on the bare model (filled further per defense)."""
        if self.original_strong is None:
            return {}
        s = self.original_strong
        searched: dict[str, Any] = {k: s[k] for k in ("search", "contested") if k in s}
        return {"n": self.n_strong, "suite": self.strong_cfg.describe(), **searched,
                "weak_on_same_examples": {"original_attacked": self.on_first(self.x_adv, self.n_strong)},
                "broken_by": {"original": s["broken_by"]},
                "seconds": {"original": s.get("seconds", {})},
                "max_perturbation": {"original": s["max_perturbation"]}}  # fmt: skip

    def attack_proactive(self, method: str, defense: Defense, x_def: torch.Tensor,
                         strong_info: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
        """Stage 4 (proactive): the defended points attacked, weakly and strongly (the bare
        model's points transferred, and for robustification undo-then-attack); returns the
        accuracies and the farthest points' distances from the natural image."""
        model, y, threat, n_strong = self.model, self.y, self.threat, self.n_strong
        # The budget is measured from the defended point (and the natural image: natural).
        x_def_adv = self.version(
            piece("defensive-attacked", method), partial(self.weak, x_def, self.natural)
        )
        acc = {"defensive_attacked": accuracy(model, x_def_adv, y)}
        distance = {"weak": float(threat.size(x_def_adv - self.x).max()) if len(self.x) else 0.0}
        if self.original_strong is None:
            return acc, distance
        self.say(
            f"strong attack ({self.strong_cfg.tier}) on the defensive data ({n_strong} examples)"
        )
        # the bare model's points transferred (each projected into the defended point's
        # threat model before it counts), then the defense's own attacks
        known = {"weak": x_def_adv, "transfer-weak": self.x_adv}
        if self.x_strong is not None:
            known["transfer-strong"] = self.x_strong
        if defense.spec.inner_attack:  # Moon et al.'s check: undo it, then attack
            self.say(f"undo-then-attack on the {method} points ({n_strong} examples)")
            known["undo-then-attack"] = self.version(piece("undo-attacked", method), partial(
                undo_then_attack, model, x_def[:n_strong], y[:n_strong], defense,
                threat=threat, steps=self.config.strong_steps, batch_size=self.bs,
                anchor=self.natural[:n_strong] if self.natural is not None else None,
                progress=self.progress), rows=n_strong)  # fmt: skip
            acc["defensive_undo_attacked"] = self.on_first(known["undo-then-attack"], n_strong)
        defensive_strong = self.record(
            f"strong-{method}",
            partial(self.strong, f"strong-{method}", x_def, known, anchored=True),
        )
        acc["defensive_attacked_strong"] = defensive_strong["accuracy"]
        strong_info["weak_on_same_examples"]["defensive_attacked"] = self.on_first(
            x_def_adv, n_strong
        )
        paired = _paired(defensive_strong, self.original_strong)
        if paired is not None:
            strong_info["paired"] = paired
        strong_info["broken_by"]["defensive"] = defensive_strong["broken_by"]
        strong_info["seconds"]["defensive"] = defensive_strong.get("seconds", {})
        strong_info["max_perturbation"]["defensive"] = defensive_strong["max_perturbation"]
        distance["strong"] = defensive_strong["max_from_natural"]
        return acc, distance

    def attack_reactive(
        self, method: str, defense: Defense
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Stage 4 (reactive): the defense applied to the attacked data, and the adaptive
        attack through it on the first ``adaptive_limit`` examples."""
        model, x, y, config = self.model, self.x, self.y, self.config
        x_adv_def = self.version(piece("defended-adversarial", method), partial(
            defend, model, self.x_adv, None, defense, batch_size=self.bs, progress=self.progress,
            precision=config.precision,
            saved=self.resumable(piece("defended-adversarial", method), f"the {method} defense of the attacked data")))  # fmt: skip
        acc = {"defended_adversarial": accuracy(model, x_adv_def, y)}
        x_strong = self.x_strong
        n_adaptive = min(config.adaptive_limit, self.n_strong if x_strong is not None else len(x))
        if not n_adaptive:
            return acc, {}
        self.say(f"adaptive attack through the {method} defense ({n_adaptive} examples)")
        known = {"weak": self.x_adv[:n_adaptive]}
        if x_strong is not None:  # the strong suite's points on the same examples
            known["strong"] = x_strong[:n_adaptive]
        adaptive = self.record(f"adaptive-{method}", partial(
            adaptive_attack, model, defense, x[:n_adaptive], y[:n_adaptive], threat=self.threat,
            known=known, config=config.adaptive_config(), seed=config.seed,
            journal=self.store.journal(f"adaptive-{method}"), progress=self.progress))  # fmt: skip
        acc["adaptive"] = adaptive["accuracy"]
        if x_strong is not None:
            acc["bare_strong_adaptive_examples"] = self.on_first(x_strong, n_adaptive)
        info = {k: v for k, v in adaptive.items() if k != "robust"}
        if self.original_strong is not None:
            paired = _paired(adaptive, self.original_strong)
            if paired is not None:
                info["paired"] = paired
        info["same_examples"] = {
            "original_attacked": self.on_first(self.x_adv, n_adaptive),
            **({"original_attacked_strong": self.on_first(x_strong, n_adaptive)}
               if x_strong is not None else {}),
        }  # fmt: skip
        return acc, info

    def result(self, method: str, defense: Defense, acc: dict[str, float],
               distance: dict[str, float], strong_info: dict[str, Any],
               adaptive_info: dict[str, Any], precision: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """One defense's result (the ``--json`` form)."""
        config = self.config
        return {
            "threat": {"norm": self.threat.norm, "eps": self.threat.eps,
                       "step_size": config.step_size, "steps": config.steps,
                       "random_start": config.random_start, "budget_from": config.budget_from},
            "defense": method,
            "defense_kind": "reactive" if defense.reactive else "proactive",
            "defense_budget": defense_budget(defense),
            "dataset": self.data.spec.name,
            "split": self.split_name,
            "n": len(self.x),
            "accuracy": acc,
            "max_from_natural": distance,
            "strong": strong_info,
            "adaptive": adaptive_info,
            "precision": precision,
            "passes": {name: cost for name, cost in self.passes.items()
                       if name in ("adversarial", "strong-original") or name.startswith(f"{method}/")
                       or name in (f"strong-{method}", f"adaptive-{method}")},
            "chunk_size": self.bs or chunk_size(self.model, tuple(self.x.shape[1:]), model_device(self.model)),
        }  # fmt: skip


def defense_budget(defense: Defense) -> dict[str, Any]:
    """What a defense may change and what it spends, as stored beside its numbers."""
    budget: dict[str, Any] = {"eps": defense.threat.eps, "steps": defense.steps,
                              "step_size": defense.step_size,
                              "passes_per_step": defense.passes_per_step}  # fmt: skip
    inner = defense.inner_attack()
    if inner is not None:
        budget["inner"] = {"eps": inner.threat.eps, "steps": inner.schedule.steps,
                           "step_size": inner.schedule.step_size, "restarts": inner.restarts,
                           "warm_start": inner.warm_start, "optimizer": defense.optimizer}  # fmt: skip
    return budget


# The settings that only concern the defenses: changing them recomputes those defenses'
# pieces and keeps the attacks on the original data (whose budget is always measured from
# the natural image, so the budget convention is one of them).
DEFENSE_FIELDS = ("defenses", "defense_eps", "defense_steps", "defense_step_size",
                  "defense_optimizer", "inner_steps", "inner_restarts", "warm_start",
                  "adaptive_limit", "adaptive_square_queries", "budget_from")  # fmt: skip

PRECISION_CHECK_N = 500
AUTO_CHECK_N = 2000
PRECISION_TOLERANCE = 0.005


def _resolve_auto_precision(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: DPConfig, say: Report
) -> tuple[DPConfig, dict[str, Any]]:
    """``--precision auto``: bf16 for the weak attack and the defenses where the device
    computes it natively *and* every number they produce on the first 2,000 examples agrees
    with fp32's within the tolerance; fp32 otherwise. Accuracies and the strong and adaptive
    attacks are fp32 whatever is chosen."""
    device = model_device(model)
    if not native_bf16(device):
        say(f"precision auto: fp32 ({device} has no native bfloat16)")
        return replace(config, precision="fp32"), {"auto": "no native bfloat16"}
    check = _agreement(model, x, y, config, "bf16", AUTO_CHECK_N)
    chosen = "bf16" if check["agrees_within_0.5pct"] else "fp32"
    say(f"precision auto: {chosen} ({_describe(check)})")
    return replace(config, precision=chosen), {**check, "auto": "native bfloat16"}


def _precision_check(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: DPConfig, say: Report
) -> dict[str, Any]:
    """A reduced precision the user asked for, measured against fp32 on a subset."""
    check = _agreement(model, x, y, config, config.precision, PRECISION_CHECK_N)
    say(f"precision check: {_describe(check)}"
        + ("" if check["agrees_within_0.5pct"] else "; prefer fp32"))  # fmt: skip
    return check


def _weak_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: DPConfig,
    precision: str,
    anchor: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The study's weak attack (PGD with the run's flags and seed) on ``images``; ``anchor``
    is the natural image a defended point's budget is also measured from."""
    return pgd(model, images, labels, threat=config.threat(), steps=config.steps,
               step_size=config.step_size, random_start=config.random_start,
               generator=torch.Generator().manual_seed(config.seed),
               batch_size=config.batch_size, progress=progress, precision=precision,
               anchor=anchor)  # fmt: skip


def _agreement(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: DPConfig, reduced: str, n: int
) -> dict[str, Any]:
    """The numbers the weak attack and the defenses produce on the first ``n`` examples, in
    fp32 and in ``reduced`` precision: the weak attack's accuracy on the original data, each
    defense's accuracy and, for a proactive one, the weak attack's on its points.

    Checking the defended points too matters: on MNIST (the standard ``cnn``, L-inf 0.2,
    PGD-20, 2,000 examples) bf16 moved the weak attack's accuracy by 0.15 points but the
    attacked ``margin``-defended accuracy by 0.85 (``experiments/precision_agreement.py``).
    """
    x, y = x[:n], y[:n]
    natural = x if config.budget_from == "original" else None
    numbers: dict[str, dict[str, float]] = {}
    for name in ("fp32", reduced):

        def attack(
            images: torch.Tensor, anchor: torch.Tensor | None = None, precision: str = name
        ) -> torch.Tensor:
            return _weak_attack(model, images, y, config, precision, anchor)

        numbers.setdefault("original_attacked", {})[name] = accuracy(model, attack(x), y)
        for method in config.defenses:
            defense = config.defense(method)
            x_def = defend(model, x, y, defense, batch_size=config.batch_size, precision=name)
            numbers.setdefault(f"{method}/defensive", {})[name] = accuracy(model, x_def, y)
            if not defense.reactive:
                attacked = accuracy(model, attack(x_def, natural), y)
                numbers.setdefault(f"{method}/defensive_attacked", {})[name] = attacked
    gaps = {k: abs(v["fp32"] - v[reduced]) for k, v in numbers.items()}
    widest = max(gaps, key=lambda k: gaps[k])
    return {
        "check_n": len(y), "numbers": numbers, "largest_difference": gaps[widest],
        "largest_difference_at": widest,
        "fp32_attacked": numbers["original_attacked"]["fp32"],
        "reduced_attacked": numbers["original_attacked"][reduced],
        "agrees_within_0.5pct": gaps[widest] <= PRECISION_TOLERANCE,
    }  # fmt: skip


def _describe(check: dict[str, Any]) -> str:
    verdict = "agree" if check["agrees_within_0.5pct"] else "DO NOT agree"
    return (f"{len(check['numbers'])} numbers on {check['check_n']} examples {verdict} with "
            f"fp32 within {PRECISION_TOLERANCE:.1%}; the widest gap "
            f"{check['largest_difference']:.2%} at {check['largest_difference_at']}")  # fmt: skip


def format_table(results: list[dict[str, Any]]) -> str:
    """The human-readable table ``defpert dp`` prints: every number with its n."""
    if not results:
        return ""
    typed = read(results)
    first = typed[0]
    t = first.threat
    suite = first.strong_suite
    lines = [
        f"{first.dataset} {first.split}, n={first.n}: PGD {t.norm} eps={t.eps} "
        f"step={t.step_size} steps={t.steps}; the attack's budget is measured from the "
        + (
            "defended point (man-in-the-middle)"
            if t.budget_from == "defended"
            else "natural image and the defended point (within eps of both)"
        ),
    ]
    if suite and first.bare.strong is not None:
        lines.append(f"strong attack: tier {suite['tier']}, worst case per example over "
                     f"{', '.join(suite['attacks'])} (n={first.bare.strong.n})")  # fmt: skip
    for r in typed:
        b = r.defense_budget
        lines.append("")
        lines.append(f"defense: {r.defense} ({r.kind}; budget eps={b['eps']}, "
                     f"steps={b['steps']}, step={b['step_size']})")  # fmt: skip
        if r.reactive:
            lines += _reactive_lines(r)
            continue
        rows = [["", "original", "defensive"],
                [f"clean (n={r.n})", _cell(r.bare.clean), _cell(r.defended.clean)],
                [f"weak attack, PGD-{t.steps} (n={r.n})", _cell(r.bare.weak),
                 _cell(r.defended.weak)]]  # fmt: skip
        if r.bare.strong is not None and r.bare.strong.n:
            m = r.bare.strong.n
            rows.append([f"weak attack on the strong suite's examples (n={m})",
                         _cell(r.bare.weak_on_strong_examples),
                         _cell(r.defended.weak_on_strong_examples)])  # fmt: skip
            rows.append([f"strong suite, worst case per example (n={m})",
                         _cell(r.bare.strong), _cell(r.defended.strong)])  # fmt: skip
        lines += ["  " + line for line in aligned(rows).splitlines()]
        far = r.record.get("max_from_natural", {})
        if far:
            lines.append(f"  largest distance of an attacked defended point from the natural image: "
                         f"{max(far.values()):.4g} ({t.norm})")  # fmt: skip
    return "\n".join(lines)


def _cell(value: Measured | None) -> str:
    return "–" if value is None else str(value)


def _reactive_lines(r: DefenseResult) -> list[str]:
    n = r.n
    rows = [[f"clean, through the defense (n={n})", _cell(r.defended.clean)],
            [f"weak attack, bare model (n={n})", _cell(r.bare.weak)],
            [f"the defense on the weak attack's points (n={n})",
             _cell(r.weak_points_through_defense)]]  # fmt: skip
    if r.adaptive is not None:
        n_ad = r.adaptive.n
        if r.bare_strong_on_adaptive_examples is not None:
            rows.append([f"strong suite, bare model (n={n_ad})",
                         _cell(r.bare_strong_on_adaptive_examples)])  # fmt: skip
        rows.append([f"adaptive attack through the defense (n={n_ad})", _cell(r.adaptive)])
    return ["  " + line for line in aligned(rows).splitlines()]
