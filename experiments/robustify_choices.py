"""Which robustify settings pay: outer optimiser, restarts, warm start, labels.

    python experiments/robustify_choices.py [--dataset digits] [--checkpoint DIR] [--n 300]
                                           [--eps 0.2] [--steps 20]

On a PGD-trained ``cnn`` (trained here on the digits in about a minute unless
``--checkpoint`` names one), every setting defends the same first ``--n`` test images with
``--steps`` outer steps of eps/8 at L-inf ``--eps`` (the defense budget equals the attack's),
then the defended points are attacked with PGD-20 from the defended point (cross-entropy
from the point itself, and the CW margin from a random start; worst case per example).
Prints a markdown table: clean and attacked accuracy and seconds per setting.
"""

from __future__ import annotations

import argparse
import time

import torch
from _benchmarks import machine

from defpert.core.engine import Schedule, perturb
from defpert.core.evaluate import accuracy, correct
from defpert.core.objectives import cross_entropy, margin
from defpert.core.threat import LinfBall
from defpert.data import load_split
from defpert.defenses import Defense, defend
from defpert.models import load_checkpoint
from defpert.train import TrainConfig, recipe, train

SETTINGS: list[tuple[str, str, dict[str, object]]] = [
    ("ce", "ce", {}),
    ("margin", "margin", {}),
    ("robustify, signed steps (the default)", "robustify", {"inner_steps": 10}),
    ("robustify, Adam", "robustify", {"inner_steps": 10, "optimizer": "adam"}),
    ("robustify, RMSprop", "robustify", {"inner_steps": 10, "optimizer": "rmsprop"}),
    ("robustify, 3 restarts", "robustify", {"inner_steps": 10, "inner_restarts": 3}),
    ("robustify, 2 inner steps, warm start", "robustify", {"inner_steps": 2, "warm_start": True}),
    ("robustify, 2 inner steps, cold", "robustify", {"inner_steps": 2}),
    ("robustify-label-free", "robustify-label-free", {"inner_steps": 10}),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--checkpoint", help="a robust checkpoint (default: train one on the digits)")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()

    if args.checkpoint:
        model, card = load_checkpoint(args.checkpoint)
        dataset = card["dataset"]
    else:
        dataset = "digits"
        cfg = TrainConfig(dataset=dataset, adversarial="pgd", adv_steps=10, adv_step_size=0.075,
                          **recipe("pgd", epochs=30))  # fmt: skip
        model = train(cfg, progress=False).model
    test = load_split(dataset, "test").head(args.n)
    x, y = test.images, test.labels
    threat = LinfBall(args.eps)

    def attacked(points: torch.Tensor) -> float:
        robust = torch.ones(len(y), dtype=torch.bool)
        for objective, random_start in ((cross_entropy, False), (margin, True)):
            schedule = Schedule(20, args.eps / 8, random_start=random_start)
            x_adv = perturb(model, points, y, threat=threat, objective=objective,
                            schedule=schedule, generator=torch.Generator().manual_seed(1))  # fmt: skip
            robust &= correct(model, x_adv, y)
        return float(robust.float().mean())

    print(f"{dataset}, n={len(y)}, L-inf {args.eps:g}, {args.steps} outer steps of eps/8; "
          f"PGD-20 (CE, and margin from a random start) from the defended point; "
          f"{machine()['cpu']}")  # fmt: skip
    print("| setting | clean | attacked | seconds |\n|---|---:|---:|---:|")
    print(f"| none (bare model) | {accuracy(model, x, y):.1%} | {attacked(x):.1%} | |")
    for label, method, options in SETTINGS:
        defense = Defense(method, threat, steps=args.steps, step_size=args.eps / 8,
                          **options)  # type: ignore[arg-type]  # fmt: skip
        started = time.perf_counter()
        x_def = defend(model, x, y, defense)
        seconds = time.perf_counter() - started
        print(f"| {label} | {accuracy(model, x_def, y):.1%} | {attacked(x_def):.1%} | "
              f"{seconds:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
