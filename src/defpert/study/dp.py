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
from defpert.data.datasets import SPLITS, Split
from defpert.defenses.methods import Defense, defend
from defpert.errors import DefpertError
from defpert.models.checkpoint import environment
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import model_device, native_bf16
from defpert.runtime.rundir import write_json
from defpert.study.config import DPConfig
from defpert.study.store import RowsJournal, Store, weights_digest
from defpert.wording import count

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
            if len(natural) else 0.0}  # fmt: skip


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
    """
    config.validate()
    if split_name not in SPLITS:
        raise DefpertError(f"unknown split {split_name!r}; choose one of: {', '.join(SPLITS)}")
    say: Report = report or (lambda _m: None)
    threat = config.threat()
    x, y = data.images, data.labels
    run = Path(out) if out is not None else None
    requested = config.precision
    auto_check: dict[str, Any] = {}
    if requested == "auto":
        config, auto_check = _resolve_auto_precision(model, x, y, config, say)
    shared = {k: v for k, v in asdict(config).items() if k not in DEFENSE_FIELDS}
    fingerprint = {"config": shared, "dataset": data.spec.name, "n": len(x),
                   "data_sha256": hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest(),
                   "weights_sha256": weights_digest(model)}  # fmt: skip
    store = Store(run, split_name, y, fingerprint)
    for method in config.defenses:
        store.for_defense(method, {"method": method,
                                   **{k: getattr(config, k) for k in DEFENSE_FIELDS if k != "defenses"}})  # fmt: skip
    if lend_from is not None and run is not None:
        lent = store.adopt(Path(lend_from))
        say(f"lent {count(lent, 'finished piece')} of the original data's attacks from {lend_from}"
            if lent else f"nothing to lend from {lend_from}: its attacks, data, model or code "
            "differ from this run's")  # fmt: skip
    reused = store.finished()
    if reused:
        say(f"resuming: {count(reused, 'finished piece')} (data versions, attack results) of "
            f"an earlier run reused from {run}; only the rest is computed")  # fmt: skip
    started = time.perf_counter()
    bs = config.batch_size

    def resumable(name: str, what: str) -> RowsJournal | None:
        """The rows journal of data version ``name``, saying so when it holds progress."""
        journal = store.rows_journal(name)
        done = journal.rows_done() if journal is not None else 0
        if done:
            say(f"continuing {what} after its first {done:,} examples (saved progress)")
        return journal

    def attack(images: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        return _weak_attack(model, images, y, config, config.precision, anchor, progress)

    # An attack on a defended point measures its budget from it (man-in-the-middle), or
    # with --budget-from original from the natural image as well.
    natural = x if config.budget_from == "original" else None

    say(f"attacking the original data: PGD-{config.steps} {threat.norm} eps={threat.eps}")
    store.version("original", lambda: x)
    x_adv = store.version("adversarial", partial(attack, x))
    acc_original = accuracy(model, x, y)
    acc_original_attacked = accuracy(model, x_adv, y)
    precision_check = auto_check or (
        _precision_check(model, x, y, config, say) if config.precision != "fp32" else {}
    )

    n_strong = min(config.strong_limit, len(x))
    strong_cfg = config.strong_config()
    kept: dict[str, torch.Tensor] = {}

    def strong(
        name: str, images: torch.Tensor, known: dict[str, torch.Tensor], keep: str = "",
        anchored: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        journal = store.journal(name)
        earlier = journal.read() if journal is not None else None
        if earlier is not None and (earlier.done or earlier.running is not None):
            say(f"continuing the strong attack {_resumed_at(earlier, strong_cfg)} (saved progress)")
        result = strong_attack(
            model, images[:n_strong], y[:n_strong], threat=threat, config=strong_cfg, seed=config.seed,
            known_adversarial={k: v[:n_strong] for k, v in known.items()}, progress=progress,
            anchor=natural[:n_strong] if anchored and natural is not None else None,
            journal=journal,
        )  # fmt: skip
        if keep:  # saved before the summary, so a saved summary always has its points
            kept[keep] = result.adversarial
            store.save(keep, result.adversarial)
        return _strong_summary(result, x[:n_strong], threat)

    original_strong, x_strong = None, None
    if config.strong:
        say(f"strong attack ({strong_cfg.tier}) on the original data ({n_strong} examples)")
        original_strong = store.record(
            "strong-original",
            partial(strong, "strong-original", x, {"weak": x_adv}, keep="strong-adversarial"),
        )
        x_strong = kept.get("strong-adversarial", store.saved("strong-adversarial"))

    def on_first(images: torch.Tensor, n: int) -> float:
        return float(correct(model, images[:n], y[:n]).float().mean()) if n else float("nan")

    threat_info = {"norm": threat.norm, "eps": threat.eps, "step_size": config.step_size,
                   "steps": config.steps, "random_start": config.random_start,
                   "budget_from": config.budget_from}  # fmt: skip
    results = []
    for method in config.defenses:
        defense = config.defense(method)
        say(f"defensive perturbation: {method} ({'reactive' if defense.reactive else 'proactive'})")
        x_def = store.version(f"{method}/defensive", partial(
            defend, model, x, y, defense, batch_size=bs, progress=progress, precision=config.precision,
            saved=resumable(f"{method}/defensive", f"the {method} defense")))  # fmt: skip
        acc: dict[str, float] = {
            "original": acc_original,
            "original_attacked": acc_original_attacked,
            "defensive": accuracy(model, x_def, y),
        }
        strong_info: dict[str, Any] = {}
        distance: dict[str, float] = {}
        if original_strong is not None:
            acc["original_attacked_strong"] = original_strong["accuracy"]
            strong_info = {"n": n_strong, "suite": strong_cfg.describe(),
                           "weak_on_same_examples": {"original_attacked": on_first(x_adv, n_strong)},
                           "broken_by": {"original": original_strong["broken_by"]},
                           "seconds": {"original": original_strong.get("seconds", {})},
                           "max_perturbation": {"original": original_strong["max_perturbation"]}}  # fmt: skip
        adaptive_info: dict[str, Any] = {}
        if not defense.reactive:
            # The budget is measured from the defended point (and the natural image: natural).
            x_def_adv = store.version(
                f"{method}/defensive-attacked", partial(attack, x_def, natural)
            )
            acc["defensive_attacked"] = accuracy(model, x_def_adv, y)
            distance["weak"] = float(threat.size(x_def_adv - x).max()) if len(x) else 0.0
            if original_strong is not None:
                say(
                    f"strong attack ({strong_cfg.tier}) on the defensive data ({n_strong} examples)"
                )
                # the bare model's points transferred (each projected into the defended
                # point's threat model before it counts), then the defense's own attacks
                known = {"weak": x_def_adv, "transfer-weak": x_adv}
                if x_strong is not None:
                    known["transfer-strong"] = x_strong
                if defense.spec.inner_attack:  # Moon et al.'s check: undo it, then attack
                    say(f"undo-then-attack on the {method} points ({n_strong} examples)")
                    known["undo-then-attack"] = store.version(f"{method}/undo-attacked", partial(
                        undo_then_attack, model, x_def[:n_strong], y[:n_strong], defense,
                        threat=threat, steps=config.strong_steps, batch_size=bs,
                        anchor=natural[:n_strong] if natural is not None else None,
                        progress=progress))  # fmt: skip
                    acc["defensive_undo_attacked"] = on_first(known["undo-then-attack"], n_strong)
                defensive_strong = store.record(
                    f"strong-{method}",
                    partial(strong, f"strong-{method}", x_def, known, anchored=True),
                )
                acc["defensive_attacked_strong"] = defensive_strong["accuracy"]
                strong_info["weak_on_same_examples"]["defensive_attacked"] = on_first(
                    x_def_adv, n_strong
                )
                strong_info["broken_by"]["defensive"] = defensive_strong["broken_by"]
                strong_info["seconds"]["defensive"] = defensive_strong.get("seconds", {})
                strong_info["max_perturbation"]["defensive"] = defensive_strong["max_perturbation"]
                distance["strong"] = defensive_strong["max_from_natural"]
        else:
            x_adv_def = store.version(f"{method}/defended-adversarial", partial(
                defend, model, x_adv, None, defense, batch_size=bs, progress=progress,
                precision=config.precision,
                saved=resumable(f"{method}/defended-adversarial", f"the {method} defense of the attacked data")))  # fmt: skip
            acc["defended_adversarial"] = accuracy(model, x_adv_def, y)
            n_adaptive = min(config.adaptive_limit, n_strong if x_strong is not None else len(x))
            if n_adaptive:
                say(f"adaptive attack through the {method} defense ({n_adaptive} examples)")
                known = {"weak": x_adv[:n_adaptive]}
                if x_strong is not None:  # the strong suite's points on the same examples
                    known["strong"] = x_strong[:n_adaptive]
                adaptive = store.record(f"adaptive-{method}", partial(
                    adaptive_attack, model, defense, x[:n_adaptive], y[:n_adaptive], threat=threat,
                    known=known, config=config.adaptive_config(), seed=config.seed,
                    journal=store.journal(f"adaptive-{method}")))  # fmt: skip
                acc["adaptive"] = adaptive["accuracy"]
                if x_strong is not None:
                    acc["bare_strong_adaptive_examples"] = on_first(x_strong, n_adaptive)
                adaptive_info = {k: v for k, v in adaptive.items() if k != "robust"}
                adaptive_info["same_examples"] = {
                    "original_attacked": on_first(x_adv, n_adaptive),
                    **({"original_attacked_strong": on_first(x_strong, n_adaptive)}
                       if x_strong is not None else {}),
                }  # fmt: skip
        results.append({
            "threat": threat_info,
            "defense": method,
            "defense_kind": "reactive" if defense.reactive else "proactive",
            "defense_budget": defense_budget(defense),
            "dataset": data.spec.name,
            "split": split_name,
            "n": len(x),
            "accuracy": acc,
            "max_from_natural": distance,
            "strong": strong_info,
            "adaptive": adaptive_info,
            "precision": {"name": config.precision, "requested": requested, **precision_check},
            "chunk_size": bs or chunk_size(model, tuple(x.shape[1:]), model_device(model)),
        })  # fmt: skip
    elapsed = time.perf_counter() - started
    for r in results:
        r["seconds_total"] = elapsed
    if run is not None:
        write_json(run / f"metrics-{split_name}.json" if split_name != "test" else run / "metrics.json",
                   {"results": results, "config": asdict(config),
                    "environment": environment(model_device(model))})  # fmt: skip
    return results


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
    first = results[0]
    t = first["threat"]
    suite = first["strong"].get("suite", {})
    lines = [
        f"{first['dataset']} {first['split']}, n={first['n']}: PGD {t['norm']} eps={t['eps']} "
        f"step={t['step_size']} steps={t['steps']}; the attack's budget is measured from the "
        + (
            "defended point (man-in-the-middle)"
            if t.get("budget_from") == "defended"
            else "natural image and the defended point (within eps of both)"
        ),
    ]
    if suite:
        lines.append(f"strong attack: tier {suite['tier']}, worst case per example over "
                     f"{', '.join(suite['attacks'])} (n={first['strong']['n']})")  # fmt: skip
    for r in results:
        a = r["accuracy"]
        strong_n = r["strong"].get("n")
        b = r["defense_budget"]
        lines.append("")
        lines.append(f"defense: {r['defense']} ({r['defense_kind']}; budget eps={b['eps']}, "
                     f"steps={b['steps']}, step={b['step_size']})")  # fmt: skip
        if r["defense_kind"] == "reactive":
            lines += _reactive_lines(r, strong_n)
            continue
        lines.append(f"  {'':44s} {'original':>9s} {'defensive':>10s}")
        clean_label = f"1-2. clean (n={r['n']})"
        lines.append(f"  {clean_label:44s} {a['original']:9.4f} {a['defensive']:10.4f}")
        weak_label = f"1-2. weak attack (PGD-{t['steps']}, n={r['n']})"
        lines.append(
            f"  {weak_label:44s} {a['original_attacked']:9.4f} {a['defensive_attacked']:10.4f}"
        )
        if "original_attacked_strong" in a:
            w = r["strong"]["weak_on_same_examples"]
            lines.append(f"  {f'   weak attack on the strong subset (n={strong_n})':44s} "
                         f"{w['original_attacked']:9.4f} {w['defensive_attacked']:10.4f}")  # fmt: skip
            lines.append(f"  {f'3. strong attack, worst case (n={strong_n})':44s} "
                         f"{a['original_attacked_strong']:9.4f} {a['defensive_attacked_strong']:10.4f}")  # fmt: skip
        far = r.get("max_from_natural", {})
        if far:
            lines.append(f"  largest distance of an attacked defended point from the natural image: "
                         f"{max(far.values()):.4g} ({t['norm']})")  # fmt: skip
    return "\n".join(lines)


def _reactive_lines(r: dict[str, Any], strong_n: int | None) -> list[str]:
    a, n = r["accuracy"], r["n"]
    lines = [f"  {f'clean, through the defense (n={n})':52s} {a['defensive']:9.4f}",
             f"  {f'weak attack, bare model (n={n})':52s} {a['original_attacked']:9.4f}",
             f"  {f'defense on the weak attack points (n={n})':52s} {a['defended_adversarial']:9.4f}"]  # fmt: skip
    if "adaptive" in a:
        ad = r["adaptive"]
        same = ad.get("same_examples", {})
        n_ad = ad["n"]
        if "original_attacked_strong" in same:
            label = f"strong attack, bare model (n={n_ad})"
            lines.append(f"  {label:52s} {same['original_attacked_strong']:9.4f}")
        label = f"4. adaptive attack through the defense (n={n_ad})"
        lines.append(f"  {label:52s} {a['adaptive']:9.4f}")
    return lines
