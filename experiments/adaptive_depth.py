"""Which candidate points survive a reactive defense: first-crossing against last-iterate.

For one checkpoint and one reactive defense, the first ``n`` test images are attacked on
the *bare* model by each candidate kind (PGD-100 on cross-entropy and on the CW margin,
last iterate; APGD-CE and APGD-DLR, first-broken and highest-loss point; PGD-100 on the
CW margin capped at kappa for several kappa), every point is passed through the defense
and judged there. The count each kind breaks alone, and the worst case over all, choose
the adaptive attack's deep candidates and kappa.

    python experiments/adaptive_depth.py --checkpoint runs/cnn-e1 --defense hedge \\
        --n 200 --out experiments/results/adaptive-depth-hedge-cnn-e1-linf0.2-n200.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from defpert.attacks import pgd
from defpert.attacks._common import project
from defpert.attacks.apgd import apgd
from defpert.core.engine import Schedule, madry_step_size, perturb
from defpert.core.evaluate import correct
from defpert.core.objectives import capped_margin
from defpert.core.threat import make_threat
from defpert.data import load_split
from defpert.defenses import DefendedModel, Defense
from defpert.models import load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--defense", default="hedge")
    p.add_argument("--norm", default="linf")
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--defense-steps", type=int, default=20)
    p.add_argument("--defense-step-size", type=float, default=0.01)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--kappas", default="0,1,2,5,10,20,50")
    p.add_argument("--out")
    a = p.parse_args()
    model, card = load_checkpoint(a.checkpoint)
    test = load_split(card["dataset"], "test")
    x, y = test.images[: a.n], test.labels[: a.n]
    threat = make_threat(a.norm, a.eps)
    defense = Defense(a.defense, threat, a.defense_steps, a.defense_step_size)
    exact = DefendedModel(model, defense, mode="bpda")
    g = torch.Generator().manual_seed(0)
    step = madry_step_size(threat.eps, 100)
    candidates: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        candidates[name] = fn()
        seconds[name] = round(time.perf_counter() - t, 2)

    timed(
        "pgd-ce-100-last",
        lambda: pgd(model, x, y, threat=threat, steps=100, step_size=step, loss="ce"),
    )
    timed(
        "pgd-margin-100-last",
        lambda: pgd(model, x, y, threat=threat, steps=100, step_size=step, loss="margin"),
    )
    timed(
        "pgd-ce-100-random-start-last",
        lambda: pgd(
            model,
            x,
            y,
            threat=threat,
            steps=100,
            step_size=step,
            loss="ce",
            random_start=True,
            generator=g,
        ),
    )
    timed(
        "apgd-ce-last-broken",
        lambda: apgd(model, x, y, threat=threat, loss="ce", generator=g, keep="last-broken"),
    )
    for loss in ("ce", "dlr"):
        timed(
            f"apgd-{loss}-first-broken",
            lambda loss=loss: apgd(model, x, y, threat=threat, loss=loss, generator=g),
        )
        timed(
            f"apgd-{loss}-highest",
            lambda loss=loss: apgd(
                model, x, y, threat=threat, loss=loss, generator=g, keep="highest"
            ),
        )
    for kappa in [float(k) for k in a.kappas.split(",")]:
        sched = Schedule(100, step, ascend=True)
        timed(
            f"cw-kappa-{kappa:g}",
            lambda kappa=kappa, sched=sched: perturb(
                model, x, y, threat=threat, objective=capped_margin(kappa), schedule=sched
            ),
        )
    bare = {
        k: int((~correct(model, project(threat, x, v), y)).sum()) for k, v in candidates.items()
    }
    through = {k: ~correct(exact, project(threat, x, v), y) for k, v in candidates.items()}
    broken = {k: int(v.sum()) for k, v in through.items()}
    worst = torch.zeros(len(y), dtype=torch.bool)
    for v in through.values():
        worst |= v
    clean_def = int((~correct(exact, x, y)).sum())
    result = {
        "checkpoint": a.checkpoint,
        "defense": vars(a),
        "n": len(y),
        "threat": {"norm": a.norm, "eps": a.eps, "budget_from": "natural image"},
        "broken_on_bare_model": bare,
        "broken_through_defense": broken,
        "defended_clean_errors": clean_def,
        "robust_through_defense_worst_over_all": float(1 - worst.float().mean()),
        "seconds": seconds,
    }
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
