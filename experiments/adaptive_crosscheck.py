"""defpert's adaptive attack through a reactive defense against an independent transfer.

The peer: torchattacks' PGD-100 (random start), APGD-CE and APGD-DLR (100 iterations) on
the *bare* model, each final point passed through defpert's own defense and judged there;
the peer's robust accuracy is the worst case per example over the three. defpert's side is
the adaptive attack of a finished ``defpert dp`` run on the same first n examples (read from
its run directory, so both sides see the same examples, model and defense).
Goal (issue 41): defpert's adaptive accuracy never above the peer's by more than 0.5 points.

    pip install --no-deps torchattacks==3.5.1     # the peer (not a dependency of defpert)
    defpert dp -p linf -k 20 -e 0.2 -a 0.01 --defense hedge,anti-adversary --limit 500 \\
        --strong-limit 500 --adaptive-limit 500 --adaptive-square-queries 200 \\
        --checkpoint runs/cnn-e1 --out runs/xcheck-cnn-linf
    python experiments/adaptive_crosscheck.py --run runs/xcheck-cnn-linf \\
        --out experiments/results/adaptive-crosscheck-cnn-linf.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from defpert.attacks._common import project
from defpert.core.evaluate import correct
from defpert.core.threat import make_threat
from defpert.data import load_split
from defpert.defenses import Defense
from defpert.models import load_checkpoint
from defpert.wording import wilson


def peer_points(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                eps: float) -> dict[str, torch.Tensor]:  # fmt: skip
    """torchattacks' last points on the bare model (their own random starts, seed 0)."""
    import torchattacks

    torch.manual_seed(0)
    if norm == "linf":
        pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 100, steps=100, random_start=True)
        n = "Linf"
    else:
        pgd = torchattacks.PGDL2(
            model, eps=eps, alpha=2.5 * eps / 100, steps=100, random_start=True
        )
        n = "L2"
    attacks = {
        "torchattacks-pgd-100": pgd,
        "torchattacks-apgd-ce": torchattacks.APGD(
            model, norm=n, eps=eps, steps=100, loss="ce", seed=0
        ),
        "torchattacks-apgd-dlr": torchattacks.APGD(
            model, norm=n, eps=eps, steps=100, loss="dlr", seed=0
        ),
    }
    out = {}
    for name, attack in attacks.items():
        out[name] = torch.cat(
            [attack(x[i : i + 250], y[i : i + 250]) for i in range(0, len(x), 250)]
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished defpert dp run directory")
    p.add_argument("--out")
    a = p.parse_args()
    run = Path(a.run)
    config = json.loads((run / "config.json").read_text())
    dp = config["dp"]
    model, card = load_checkpoint(config["checkpoint"])
    split = load_split(config["dataset"], "test")
    threat = make_threat(dp["norm"], dp["eps"])
    metrics = json.loads((run / "metrics.json").read_text())["results"]
    bare = {r["defense"]: r["accuracy"].get("bare_strong_adaptive_examples") for r in metrics}
    rows = []
    for method in dp["defenses"]:
        path = run / "partial" / "test" / f"adaptive-{method}.json"
        if not path.is_file():
            continue
        ours = json.loads(path.read_text())
        n = ours["n"]
        x, y = split.images[:n], split.labels[:n]
        defense = Defense(method, make_threat(dp["norm"], dp["defense_eps"] or dp["eps"]),
                          steps=dp["defense_steps"] or dp["steps"],
                          step_size=dp["defense_step_size"] or dp["step_size"])  # fmt: skip
        exact = defense.wrap(model, "bpda")
        started = time.perf_counter()
        points = peer_points(model, x, y, dp["norm"], dp["eps"])
        peer_seconds = time.perf_counter() - started
        robust = torch.ones(n, dtype=torch.bool)
        alone = {}
        for name, pts in points.items():
            survived = correct(exact, project(threat, x, pts), y)
            alone[name] = int((~survived).sum())
            robust &= survived
        ours_robust = torch.tensor(ours["robust"])
        k_ours, k_peer = int(ours_robust.sum()), int(robust.sum())
        rows.append({
            "defense": method, "n": n,
            "threat": {"norm": dp["norm"], "eps": dp["eps"], "budget_from": "natural image"},
            "defense_budget": {"eps": defense.threat.eps, "steps": defense.steps,
                               "step_size": defense.step_size},
            "defpert_adaptive": {"accuracy": k_ours / n, "interval95": list(wilson(k_ours, n)),
                                 "broken_by": ours["broken_by"], "seconds": ours["seconds"]},
            "peer_transfer": {"accuracy": k_peer / n, "interval95": list(wilson(k_peer, n)),
                              "broken_alone": alone, "seconds": round(peer_seconds, 1)},
            "bare_strong_same_examples": bare.get(method),
            "defpert_minus_peer_points": 100 * (k_ours - k_peer) / n,
            "robust_for_defpert_not_for_peer": int((ours_robust & ~robust).sum()),
            "robust_for_peer_not_for_defpert": int((robust & ~ours_robust).sum()),
        })  # fmt: skip
        print(
            f"{method}: defpert adaptive {k_ours / n:.1%}, peer transfer {k_peer / n:.1%} (n={n})"
        )
    result = {"run": str(run), "checkpoint": config["checkpoint"], "model": card.get("training", {}),
              "rows": rows}  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
