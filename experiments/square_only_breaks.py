"""Where gradient attacks go blind: Square's breaks that PGD misses, per data version.

    python experiments/square_only_breaks.py RUN_DIR [--defense robustify] [--rows natural,defense,ce]
        [--json-out FILE]

``RUN_DIR`` is a finished ``defpert dp`` run with a proactive defense (its saved points are
read, so the defended points are exactly the study's). For the natural images, the run's
defended points and, as a control, ``ce``-defended points of the same budget, every point is
attacked within the run's ball around it (the budget measured from that point, as in the
run; for a ``--budget-from original`` run, a defended point's attacks also stay within eps
of the natural image, Square's queries included) by PGD-100 with cross-entropy and with
the CW margin (random start) and by Square with 5,000 queries, all on every example (no
cascade). Prints, per version, how many each breaks,
how many only Square breaks, and the margin ``z_y - max_{j != y} z_j`` along the straight
line from each Square-broken point's start to Square's point: a margin that stays high and
then falls off a cliff is a landscape where gradient steps see no way down.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _benchmarks import machine

from defpert.attacks.pgd import pgd
from defpert.attacks.square import square
from defpert.core.evaluate import correct
from defpert.core.objectives import margin
from defpert.defenses import defend
from defpert.models import load_checkpoint
from defpert.models.shipped import resolve
from defpert.study.config import DPConfig

PATH_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def margins(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per example: negative means misclassified."""
    with torch.no_grad():
        return -margin(model(x), y)


def probe(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Any,
    anchor: torch.Tensor | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every attack on every example of ``x``, each within ``threat`` around its own point
    (and around ``anchor``, when given)."""
    row: dict[str, Any] = {"clean": int(correct(model, x, y).sum())}
    broken = {}
    started = time.perf_counter()
    for loss in ("ce", "margin"):
        adv = pgd(model, x, y, threat=threat, steps=100, step_size=threat.eps / 40, loss=loss,
                  random_start=loss == "margin", generator=torch.Generator().manual_seed(0),
                  anchor=anchor)  # fmt: skip
        broken[f"pgd-{loss}-100"] = ~correct(model, adv, y)
    sq = square(model, x, y, threat=threat, queries=5000, anchor=anchor,
                generator=torch.Generator().manual_seed(0))  # fmt: skip
    broken["square-5000"] = ~correct(model, sq, y)
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["broken_by"] = {name: int(b.sum()) for name, b in broken.items()}
    gradient = broken["pgd-ce-100"] | broken["pgd-margin-100"]
    row["square_only"] = int((broken["square-5000"] & ~gradient).sum())
    hit = broken["square-5000"].nonzero().squeeze(1)
    if len(hit):
        row["margin_along_path_median"] = {
            f"{a:g}": round(float(margins(model, x[hit] + a * (sq[hit] - x[hit]), y[hit]).median()), 2)
            for a in PATH_POINTS
        }  # fmt: skip
        others = (~broken["square-5000"]).nonzero().squeeze(1)
        row["margin_at_start_median"] = {
            "square_broken": round(float(margins(model, x[hit], y[hit]).median()), 2),
            "others": round(float(margins(model, x[others], y[others]).median()), 2),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--defense", default="robustify")
    parser.add_argument("--rows", default="natural,defense,ce",
                        help="which points to attack: natural, defense (the run's), ce (control)")  # fmt: skip
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    config = json.loads((args.run / "config.json").read_text())
    dp = config["dp"]
    wanted = set(args.rows.split(","))
    model, _ = load_checkpoint(resolve(config["checkpoint"]))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    versions = args.run / "versions" / "test"
    natural = np.load(versions / "original.npz")
    x, y = torch.from_numpy(natural["images"]).float(), torch.from_numpy(natural["labels"]).long()
    defended = torch.from_numpy(
        np.load(versions / args.defense / "defensive.npz")["images"]
    ).float()
    study = DPConfig(**{k: tuple(v) if k == "defenses" else v for k, v in dp.items()})
    threat = study.threat()
    control = study.defense("ce")  # the same budget and steps as the study's defense
    anchor = x if dp["budget_from"] == "original" else None
    rows = {}
    if "natural" in wanted:
        rows["natural (bare model)"] = probe(model, x, y, threat)
    if "defense" in wanted:
        rows[f"{args.defense} points"] = probe(model, defended, y, threat, anchor)
    if "ce" in wanted:
        ce_points = defend(model, x, y, control)
        rows["ce points (control, same budget)"] = probe(model, ce_points, y, threat, anchor)
    measured = "each row's own points" + (
        " and, for defended points, the natural image" if anchor is not None else ""
    )
    out = {"run": str(args.run), "checkpoint": config["checkpoint"], "n": len(y),
           "threat": f"{dp['norm']} eps {dp['eps']:g}, measured from {measured}",
           "budget_from": dp["budget_from"], "rows": rows, "machine": machine()}  # fmt: skip
    print(f"n = {len(y)}, {out['threat']}")
    print("| points | clean | PGD-100 CE | PGD-100 margin | Square-5000 | only Square | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        b = r["broken_by"]
        print(f"| {name} | {r['clean']} | {b['pgd-ce-100']} | {b['pgd-margin-100']} | "
              f"{b['square-5000']} | {r['square_only']} | {r['seconds']} |")  # fmt: skip
    for name, r in rows.items():
        if "margin_along_path_median" in r:
            print(f"{name}: median margin from the start (0) to Square's point (1): "
                  f"{r['margin_along_path_median']}; at the start, broken vs the rest: "
                  f"{r['margin_at_start_median']}")  # fmt: skip
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
