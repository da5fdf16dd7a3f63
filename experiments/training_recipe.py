"""Is PGD-10 adversarial training as good as Madry et al.'s PGD-40, under the strong suite?

    python experiments/training_recipe.py [--dataset digits] [--epochs 30] [--eps 0.3]
                                         [--n 360] [--tier standard]

Trains the ``cnn`` twice with the same seed and schedule, once with 40 PGD steps of 0.01
per batch (Madry et al.) and once with 10 steps of 2.5 eps / 10 (a quarter of the passes),
plus TRADES with the 10-step inner attack, then measures each on the same first ``--n``
test images: clean, PGD-40 and the strong suite at the training radius (budget from the
natural image). Prints a markdown table with the training seconds.
"""

from __future__ import annotations

import argparse
import time

from _benchmarks import machine

from defpert.attacks import StrongConfig, pgd, strong_attack
from defpert.core.evaluate import accuracy
from defpert.core.threat import LinfBall
from defpert.data import load_split
from defpert.train import TrainConfig, recipe, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--n", type=int, default=360)
    p.add_argument("--tier", default="standard")
    args = p.parse_args()

    recipes = {
        "PGD-40, step 0.01": ("pgd", 40, 0.01),
        "PGD-10, step 2.5 eps / 10": ("pgd", 10, 2.5 * args.eps / 10),
        "TRADES, 10 steps of 2.5 eps / 10": ("trades", 10, 2.5 * args.eps / 10),
    }
    test = load_split(args.dataset, "test").head(args.n)
    threat = LinfBall(args.eps)
    print(f"{args.dataset}, cnn, {args.epochs} epochs, L-inf {args.eps:g}, n={len(test)}, "
          f"strong tier {args.tier}; {machine()['cpu']}")  # fmt: skip
    print("| training | seconds | clean | PGD-40 | strong |\n|---|---:|---:|---:|---:|")
    for label, (kind, steps, step) in recipes.items():
        cfg = TrainConfig(dataset=args.dataset, adversarial=kind, adv_eps=args.eps,
                          adv_steps=steps, adv_step_size=step, **recipe(kind, epochs=args.epochs))  # fmt: skip
        started = time.perf_counter()
        model = train(cfg, progress=False).model
        seconds = time.perf_counter() - started
        x, y = test.images, test.labels
        weak = pgd(model, x, y, threat=threat, steps=40, step_size=args.eps / 10)
        strong = strong_attack(model, x, y, threat=threat, config=StrongConfig(args.tier),
                               known_adversarial=[weak])  # fmt: skip
        print(f"| {label} | {seconds:.0f} | {accuracy(model, x, y):.1%} | "
              f"{accuracy(model, weak, y):.1%} | {strong.accuracy:.1%} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
