"""Accuracy versus eps: ``defpert sweep -p linf --eps 0.05,0.1,0.2,0.3``; and versus the
defender's budget: ``defpert sweep --eps 0.2 --defense-eps 0,0.1,0.2,0.3,0.4``.

For each attacker's radius: the weak attack (the original's schedule, step size scaled
with eps) and the strong suite, on the original data and on the defensive data. For each
defender's budget (the attacker's eps fixed): the same attacks on the defended points,
the defense's step size scaled with its budget (2.5 eps_def / steps).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from defpert.core.engine import madry_step_size
from defpert.data.datasets import Split
from defpert.errors import DefpertError
from defpert.results import BudgetRow, DefenseResult, SweepRow
from defpert.study.dp import DPConfig, run_dp

# Step size as a fraction of eps, from the original study's commands (0.01 / 0.2, 0.075 / 2.5).
STEP_FRACTION = {"linf": 0.05, "l2": 0.03}


def parse_eps_list(text: str) -> list[float]:
    """``"0.05,0.1,0.2"`` -> ``[0.05, 0.1, 0.2]``, with a clear error for anything else."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DefpertError(f"--eps must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise DefpertError("--eps needs at least one radius")
    return values


def run_sweep(
    model: nn.Module,
    data: Split,
    base: DPConfig,
    eps_values: Sequence[float],
    *,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per eps (:class:`defpert.results.SweepRow` as JSON): the bare model and the
    defended points, each clean, under the weak attack (on all examples and on the strong
    suite's first ones, the number to compare the strong one with) and the strong suite.

    With ``out``, each radius's data versions are saved under ``out/eps-<eps>`` as they
    complete, and a rerun after an interruption reuses them.
    """
    rows = []
    fraction = STEP_FRACTION.get(base.norm, 0.05)
    for eps in eps_values:
        cfg = replace(base, eps=eps, step_size=fraction * eps, adaptive_limit=0,
                      defense_eps=None, defense_step_size=None)  # fmt: skip
        cfg.validate()
        if report:
            report(f"sweep: {base.norm} eps={eps}")
        where = Path(out) / f"eps-{eps:g}" if out is not None else None
        result = DefenseResult.from_json(run_dp(model, data, cfg, progress=progress, out=where)[0])
        rows.append(SweepRow.of(result).to_json())
    return rows


def run_budget_sweep(
    model: nn.Module,
    data: Split,
    base: DPConfig,
    defense_eps_values: Sequence[float],
    *,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (defense, defender's budget) at the attacker's fixed ``base.eps``
    (:class:`defpert.results.BudgetRow` as JSON).

    A budget of 0 is the bare model: its row, one per defense so that every curve starts
    at the undefended point, holds the original data's numbers.
    """
    if any(e < 0 for e in defense_eps_values):
        raise DefpertError("a defense budget must be 0 or more")
    budgets = [e for e in defense_eps_values if e > 0] or [base.eps]
    by_budget: dict[float, list[dict[str, Any]]] = {}
    first_run: Path | None = None
    for eps_def in budgets:
        steps = base.defense_steps or base.steps
        cfg = replace(base, adaptive_limit=0, defense_eps=eps_def,
                      defense_step_size=madry_step_size(eps_def, steps))  # fmt: skip
        cfg.validate()
        if report:
            report(f"defender's budget: {base.norm} eps_def={eps_def:g} (attack eps {base.eps:g})")
        where = Path(out) / f"eps-def-{eps_def:g}" if out is not None else None
        # every budget attacks the same original data: computed once, lent to the others
        by_budget[eps_def] = run_dp(model, data, cfg, progress=progress, out=where,
                                    lend_from=first_run)  # fmt: skip
        first_run = first_run or where
    rows = []
    for eps_def in defense_eps_values:
        for result in map(DefenseResult.from_json, by_budget[eps_def or budgets[0]]):
            numbers = result.bare if eps_def == 0 else result.defended
            rows.append(BudgetRow(result.defense, eps_def, base.eps, numbers).to_json())
    return rows
