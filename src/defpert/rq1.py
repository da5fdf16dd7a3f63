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
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defpert import distributed
from defpert.attacks import StrongConfig, StrongResult, pgd, strong_attack
from defpert.data import SPLITS, Split
from defpert.defenses import DEFENSES, DefendedModel, Defense, defend
from defpert.devices import check_precision, model_device
from defpert.engine import Schedule, madry_step_size
from defpert.errors import DefpertError
from defpert.evaluate import accuracy, correct
from defpert.models import environment
from defpert.runs import read_json, write_atomic, write_json
from defpert.threat import ThreatModel, make_threat

Report = Callable[[str], None]


@dataclass
class DPConfig:
    """Everything that determines a ``defpert dp`` result."""

    norm: str = "linf"
    eps: float = 0.2
    step_size: float = 0.01
    steps: int = 20
    defenses: tuple[str, ...] = ("ce",)
    random_start: bool = False
    strong: bool = True
    strong_limit: int = 1000
    strong_steps: int = 100
    strong_restarts: int = 2
    square_queries: int = 200
    use_art: bool = True
    adaptive_limit: int = 200
    defense_eps: float | None = None  # default: the attack's eps
    defense_steps: int | None = None
    defense_step_size: float | None = None
    seed: int = 0
    batch_size: int | None = None  # None: the engine's default chunk for the device
    precision: str = "fp32"  # of the weak attack and the defenses; accuracies are fp32
    extra: dict[str, Any] = field(default_factory=dict)

    def threat(self) -> ThreatModel:
        return make_threat(self.norm, self.eps)

    def defense(self, method: str) -> Defense:
        return Defense(
            method=method,
            threat=make_threat(self.norm, self.defense_eps or self.eps),
            steps=self.defense_steps or self.steps,
            step_size=self.defense_step_size or self.step_size,
        )

    def validate(self) -> None:
        check_precision(self.precision)
        self.threat()
        Schedule(self.steps, self.step_size)
        for method in self.defenses:
            self.defense(method)
        if not self.defenses:
            raise DefpertError(f"name at least one defense: {', '.join(DEFENSES)}")
        for name in (
            "strong_limit",
            "strong_steps",
            "strong_restarts",
            "square_queries",
            "batch_size",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DefpertError(f"--{name.replace('_', '-')} must be at least 1")
        if self.adaptive_limit < 0:
            raise DefpertError("--adaptive-limit must be 0 or more")


def save_version(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Save one data version as ``.npz`` with ``images`` (N, C, H, W) float32 and ``labels``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images.numpy().astype(np.float32), labels=labels.numpy())

    write_atomic(path, write)


class _Store:
    """Finished pieces of a ``dp`` run, saved as each completes and reused by a rerun.

    Each data version (``versions/<split>/...npz``) and each strong or adaptive result
    (``partial/<split>/...json``) is one piece, written atomically. ``fingerprint``
    records what the pieces were computed from (config, data, model weights); pieces of
    another fingerprint are discarded, never mixed in. Without a run directory nothing is
    saved or reused.
    """

    def __init__(
        self, run: Path | None, split: str, labels: torch.Tensor, fingerprint: dict[str, Any]
    ) -> None:
        self.labels = labels
        self.versions = run / "versions" / split if run is not None else None
        self.partial = run / "partial" / split if run is not None else None
        if run is None or self.partial is None or self.versions is None:
            return
        stamp = self.partial / "fingerprint.json"
        fingerprint = json.loads(json.dumps(fingerprint))
        if not stamp.is_file() or read_json(stamp) != fingerprint:
            if distributed.is_main():
                for old in (self.versions, self.partial):
                    shutil.rmtree(old, ignore_errors=True)
            distributed.barrier()
            write_json(stamp, fingerprint)

    def version(self, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.versions is None:
            return compute()
        saved = self.saved(name)
        if saved is not None:
            return saved
        images = compute()
        self.save(name, images)
        return images

    def saved(self, name: str) -> torch.Tensor | None:
        """A saved data version, or None."""
        path = self.versions / f"{name}.npz" if self.versions is not None else None
        if path is None or not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as saved:
            return torch.from_numpy(saved["images"])

    def save(self, name: str, images: torch.Tensor) -> None:
        """Save a data version of the first ``len(images)`` examples."""
        if self.versions is not None:
            save_version(self.versions / f"{name}.npz", images, self.labels[: len(images)])

    def record(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if self.partial is None:
            return compute()
        path = self.partial / f"{name}.json"
        if path.is_file():
            return dict(read_json(path))
        result = compute()
        write_json(path, result)
        return result


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _strong_summary(result: StrongResult) -> dict[str, Any]:
    return {"accuracy": result.accuracy, "broken_by": result.broken_by,
            "max_perturbation": result.max_perturbation}  # fmt: skip


def run_dp(
    model: nn.Module,
    data: Split,
    config: DPConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    split_name: str = "test",
    progress: bool = False,
    report: Report | None = None,
) -> list[dict[str, Any]]:
    """Run the RQ1 study on ``data``; return one result dict per defense (the ``--json`` form).

    With ``out``, every data version and strong/adaptive result is saved as it completes;
    a rerun (after an interruption) reuses them and ends with the same results.
    """
    config.validate()
    if split_name not in SPLITS:
        raise DefpertError(f"unknown split {split_name!r}; choose one of: {', '.join(SPLITS)}")
    say: Report = report or (lambda _m: None)
    threat = config.threat()
    x, y = data.images, data.labels
    run = Path(out) if out is not None else None
    fingerprint = {"config": asdict(config), "dataset": data.spec.name, "n": len(x),
                   "data_sha256": hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest(),
                   "weights_sha256": _weights_digest(model)}  # fmt: skip
    store = _Store(run, split_name, y, fingerprint)
    started = time.perf_counter()
    bs = config.batch_size

    def attack(images: torch.Tensor) -> torch.Tensor:
        return pgd(model, images, y, threat=threat, steps=config.steps, step_size=config.step_size,
                   random_start=config.random_start,
                   generator=torch.Generator().manual_seed(config.seed), batch_size=bs,
                   progress=progress, precision=config.precision)  # fmt: skip

    say(f"attacking the original data: PGD-{config.steps} {threat.norm} eps={threat.eps}")
    store.version("original", lambda: x)
    x_adv = store.version("adversarial", partial(attack, x))
    acc_original = accuracy(model, x, y)
    acc_original_attacked = accuracy(model, x_adv, y)
    precision_check = (
        _precision_check(model, x, y, x_adv, config, say) if config.precision != "fp32" else {}
    )

    n_strong = min(config.strong_limit, len(x))
    strong_cfg = StrongConfig(steps=config.strong_steps, restarts=config.strong_restarts,
                              use_art=config.use_art, square_queries=config.square_queries,
                              batch_size=bs)  # fmt: skip

    kept: dict[str, torch.Tensor] = {}

    def strong(images: torch.Tensor, attacked: torch.Tensor, keep: str = "") -> dict[str, Any]:
        result = strong_attack(
            model, images[:n_strong], y[:n_strong], threat=threat, config=strong_cfg,
            seed=config.seed, known_adversarial=[attacked[:n_strong]], progress=progress,
        )  # fmt: skip
        if keep:  # saved before the summary, so a saved summary always has its points
            kept[keep] = result.adversarial
            store.save(keep, result.adversarial)
        return _strong_summary(result)

    original_strong, x_strong = None, None
    if config.strong:
        say(f"strong attack on the original data ({n_strong} examples)")
        original_strong = store.record(
            "strong-original", partial(strong, x, x_adv, keep="strong-adversarial")
        )
        x_strong = kept.get("strong-adversarial", store.saved("strong-adversarial"))

    results = []
    for method in config.defenses:
        defense = config.defense(method)
        say(f"defensive perturbation: {method} ({'reactive' if defense.reactive else 'proactive'})")
        x_def = store.version(f"{method}/defensive", partial(
            defend, model, x, y, defense, batch_size=bs, progress=progress, precision=config.precision))  # fmt: skip
        x_def_adv = store.version(f"{method}/defensive-attacked", partial(attack, x_def))
        acc: dict[str, float] = {
            "original": acc_original,
            "original_attacked": acc_original_attacked,
            "defensive": accuracy(model, x_def, y),
            "defensive_attacked": accuracy(model, x_def_adv, y),
        }
        strong_info: dict[str, Any] = {}
        if original_strong is not None:
            say(f"strong attack on the defensive data ({n_strong} examples)")
            defensive_strong = store.record(f"strong-{method}", partial(strong, x_def, x_def_adv))
            acc["original_attacked_strong"] = original_strong["accuracy"]
            acc["defensive_attacked_strong"] = defensive_strong["accuracy"]
            strong_info = {
                "n": n_strong,
                "weak_on_same_examples": {
                    "original_attacked": float(correct(model, x_adv[:n_strong], y[:n_strong]).float().mean()),
                    "defensive_attacked": float(correct(model, x_def_adv[:n_strong], y[:n_strong]).float().mean()),
                },
                "broken_by": {"original": original_strong["broken_by"], "defensive": defensive_strong["broken_by"]},
                "max_perturbation": {"original": original_strong["max_perturbation"],
                                     "defensive": defensive_strong["max_perturbation"]},
                "suite": asdict(strong_cfg),
            }  # fmt: skip
        adaptive_info: dict[str, Any] = {}
        if defense.reactive:
            defended = DefendedModel(model, defense, mode="bpda")
            x_adv_def = store.version(f"{method}/defended-adversarial", partial(
                defend, model, x_adv, None, defense, batch_size=bs, progress=progress,
                precision=config.precision))  # fmt: skip
            acc["defended_adversarial"] = accuracy(model, x_adv_def, y)
            n_adaptive = min(config.adaptive_limit, len(x))
            if n_adaptive:
                say(f"adaptive attack through the {method} defense ({n_adaptive} examples)")
                known = [x_adv[:n_adaptive]]
                if x_strong is not None:  # the strong suite's points where it ran
                    known.append(
                        torch.cat([x_strong[:n_adaptive], x_adv[len(x_strong) : n_adaptive]])
                    )
                adaptive = store.record(f"adaptive-{method}", partial(
                    _adaptive, model, defended, defense, x[:n_adaptive], y[:n_adaptive],
                    known, config))  # fmt: skip
                acc["adaptive"], adaptive_info = adaptive["accuracy"], adaptive["info"]
        results.append({
            "threat": {"norm": threat.norm, "eps": threat.eps, "step_size": config.step_size,
                       "steps": config.steps, "random_start": config.random_start},
            "defense": method,
            "defense_kind": "reactive" if defense.reactive else "proactive",
            "defense_budget": {"eps": defense.threat.eps, "steps": defense.steps,
                               "step_size": defense.step_size,
                               **({"inner_steps": defense.inner_steps} if method == "minmax" else {})},
            "dataset": data.spec.name,
            "split": split_name,
            "n": len(x),
            "accuracy": acc,
            "strong": strong_info,
            "adaptive": adaptive_info,
            "precision": {"name": config.precision, **precision_check},
        })  # fmt: skip
    elapsed = time.perf_counter() - started
    for r in results:
        r["seconds_total"] = elapsed
    if run is not None:
        write_json(run / f"metrics-{split_name}.json" if split_name != "test" else run / "metrics.json",
                   {"results": results, "config": asdict(config),
                    "environment": environment(model_device(model))})  # fmt: skip
    return results


PRECISION_CHECK_N = 500
PRECISION_TOLERANCE = 0.005


def _precision_check(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    config: DPConfig,
    say: Report,
) -> dict[str, Any]:
    """Rerun the weak attack in fp32 on a subset; does reduced precision change the accuracy?"""
    n = min(PRECISION_CHECK_N, len(x))
    fp32 = pgd(model, x[:n], y[:n], threat=config.threat(), steps=config.steps,
               step_size=config.step_size, random_start=config.random_start,
               generator=torch.Generator().manual_seed(config.seed), batch_size=config.batch_size)  # fmt: skip
    acc_fp32, acc_reduced = accuracy(model, fp32, y[:n]), accuracy(model, x_adv[:n], y[:n])
    agree = abs(acc_fp32 - acc_reduced) <= PRECISION_TOLERANCE
    say(f"precision check ({n} examples, weak attack): fp32 {acc_fp32:.4f}, "
        f"{config.precision} {acc_reduced:.4f}: "
        + ("agree within 0.5 %" if agree else "DO NOT agree within 0.5 %; prefer fp32"))  # fmt: skip
    return {"check_n": n, "fp32_attacked": acc_fp32, "reduced_attacked": acc_reduced,
            "agrees_within_0.5pct": agree}  # fmt: skip


def _adaptive(
    model: nn.Module,
    defended_bpda: DefendedModel,
    defense: Defense,
    x: torch.Tensor,
    y: torch.Tensor,
    known: list[torch.Tensor],
    config: DPConfig,
) -> dict[str, Any]:
    """Worst case over: points found against the bare model (the weak attack's, then the
    strong suite's), BPDA through the defense, and the unrolled defense.

    The known points matter: an attack through the defense can be weaker than the strong
    suite, and a reactive defense is only as good as its worst case. BPDA runs as long as
    the strong suite's PGD (``strong_steps``, CW margin loss): on a robust model the weak
    attack's 20 steps through the defense leave points that 100 steps break.
    """
    threat = config.threat()
    robust = torch.ones(len(y), dtype=torch.bool)
    broken: dict[str, int] = {}
    for name, points in zip(("plain", "strong"), known, strict=False):
        still = correct(defended_bpda, points, y, batch_size=64)
        broken[name] = int((robust & ~still).sum())
        robust &= still
    strong_step = madry_step_size(threat.eps, config.strong_steps)
    bpda = ("bpda", 64, config.strong_steps, strong_step, "margin")
    unrolled = ("unrolled", 16, config.steps, config.step_size, "ce")
    for mode, bs, steps, step_size, loss in (bpda, unrolled):
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        through = DefendedModel(model, defense, mode=mode)
        cand = pgd(through, x[idx], y[idx], threat=threat, steps=steps, step_size=step_size,
                   loss=loss, batch_size=bs)  # fmt: skip
        still = correct(defended_bpda, cand, y[idx], batch_size=64)
        robust[idx[~still]] = False
        broken[mode] = int((~still).sum())
    return {"accuracy": float(robust.float().mean()), "info": {"n": len(x), "broken_by": broken}}


def format_table(results: list[dict[str, Any]]) -> str:
    """The human-readable table ``defpert dp`` prints."""
    if not results:
        return ""
    first = results[0]
    t = first["threat"]
    lines = [
        f"{first['dataset']} {first['split']}, n={first['n']}: PGD {t['norm']} eps={t['eps']} "
        f"step={t['step_size']} steps={t['steps']}",
    ]
    for r in results:
        a = r["accuracy"]
        strong_n = r["strong"].get("n")
        lines.append("")
        lines.append(f"defense: {r['defense']} ({r['defense_kind']}; budget eps={r['defense_budget']['eps']}, "
                     f"steps={r['defense_budget']['steps']}, step={r['defense_budget']['step_size']})")  # fmt: skip
        lines.append(f"  {'':44s} {'original':>9s} {'defensive':>10s}")
        lines.append(f"  {'1-2. clean':44s} {a['original']:9.4f} {a['defensive']:10.4f}")
        weak_label = f"1-2. weak attack (PGD-{t['steps']}, the original study)"
        lines.append(f"  {weak_label:44s} "
                     f"{a['original_attacked']:9.4f} {a['defensive_attacked']:10.4f}")  # fmt: skip
        if "original_attacked_strong" in a:
            w = r["strong"]["weak_on_same_examples"]
            lines.append(f"  {f'   weak attack on the strong subset (n={strong_n})':44s} "
                         f"{w['original_attacked']:9.4f} {w['defensive_attacked']:10.4f}")  # fmt: skip
            lines.append(f"  {f'3. strong attack, worst case (n={strong_n})':44s} "
                         f"{a['original_attacked_strong']:9.4f} {a['defensive_attacked_strong']:10.4f}")  # fmt: skip
        if "defended_adversarial" in a:
            lines.append(
                f"  {'4. defense applied to adversarial inputs':44s} {a['defended_adversarial']:9.4f}"
            )
        if "adaptive" in a:
            n_ad = r["adaptive"]["n"]
            lines.append(
                f"  {f'4. adaptive attack through defense (n={n_ad})':44s} {a['adaptive']:9.4f}"
            )
    return "\n".join(lines)
