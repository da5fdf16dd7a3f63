"""Searching inside both balls vs projecting afterwards, under ``--budget-from original``.

    python experiments/search_inside_both_balls.py [--n 200] [--json-out FILE]

With the attacker's budget measured from the natural image as well as from the defended
point, a point must lie in the intersection of the two balls. Square and FAB can search
inside it (``anchor=``), or search the defended point's ball and have their points
projected afterwards (what defpert did before 2026-11-26). On ``ce``-defended points of the
digits (a `mlp` trained here by ``defpert.train``, seconds), at L-inf 0.1 and L2 1.0, this
counts how many examples each way breaks: Square with 300 queries, FAB-T with 30 steps,
same seed, same examples. A projection can only lose breaks, so "inside" should not be
below "projected".
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _benchmarks import emit, machine

from defpert.attacks._common import project
from defpert.attacks.fab import fab
from defpert.attacks.square import square
from defpert.core.evaluate import correct
from defpert.core.threat import L2Ball, LinfBall
from defpert.data import load_split
from defpert.defenses import Defense, defend
from defpert.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test examples (digits: up to 360)")
    parser.add_argument("--json-out")
    args = parser.parse_args()

    model = train(TrainConfig(dataset="digits", model="mlp", epochs=30), progress=False).model
    test = load_split("digits", "test")
    x, y = test.images[: args.n], test.labels[: args.n]
    rows: list[dict[str, Any]] = []
    for threat in (LinfBall(0.1), L2Ball(1.0)):
        x_def = defend(model, x, y, Defense("ce", threat, steps=10, step_size=threat.eps / 4))
        attacks = {
            "square-300": lambda a, t=threat, xd=x_def: square(
                model, xd, y, threat=t, queries=300, anchor=a,
                generator=torch.Generator().manual_seed(0)),
            "fab-t-30": lambda a, t=threat, xd=x_def: fab(
                model, xd, y, threat=t, steps=30, anchor=a,
                generator=torch.Generator().manual_seed(0)),
        }  # fmt: skip
        for name, attack in attacks.items():
            started = time.perf_counter()
            inside = attack(x)
            projected = project(threat, x_def, attack(None), x)
            rows.append({
                "norm": threat.norm, "eps": threat.eps, "budget_from": "original", "attack": name, "n": len(x),
                "defended_correct": int(correct(model, x_def, y).sum()),
                "broken_inside": int((~correct(model, inside, y)).sum()),
                "broken_projected_afterwards": int((~correct(model, projected, y)).sum()),
                "seconds": round(time.perf_counter() - started, 1),
            })  # fmt: skip
    emit({"benchmark": "search_inside_both_balls", "defense": "ce (10 steps of eps/4)",
          "model": "digits mlp, 30 epochs, seed 0", "rows": rows, "machine": machine()},
         args.json_out)  # fmt: skip


if __name__ == "__main__":
    main()
