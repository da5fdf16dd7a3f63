"""Defensive-perturbation throughput (image-steps per second) for every defense method.

    python benchmarks/defense_throughput.py [--batch 512] [--steps 10] [--reps 3]

defpert's ``defend`` against the textbook loop (the whole batch, a channels-first cnn
with ReLU before pooling, trainable parameters) on the same weights, and, for the
methods it can express (``ce``: PGD targeted at the true label; ``anti-adversary``:
targeted at the model's own prediction), against torchattacks. Interleaved in one
process, medians. An image-step is one outer step; ``robustify`` does 1 + inner-steps passes in each
(11 with its default 10-step inner PGD).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _common import emit, interleaved, machine, median
from pgd_throughput import mnist_batch

from defpert.core.engine import Schedule, perturb_batch
from defpert.core.evaluate import predict
from defpert.core.threat import LinfBall
from defpert.defenses import DEFENSES, LABEL_FREE, Defense, defend
from defpert.models import build_model
from defpert.testing import textbook_model


def textbook_defend(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, d: Defense
) -> torch.Tensor:
    """The same optimisation, whole batch at once, no engine levers."""
    labels = predict(model, x) if d.method in LABEL_FREE else y
    return perturb_batch(model, x, labels, threat=d.threat, objective=d.objective,
                         schedule=d.schedule, inner=d.inner_attack())  # fmt: skip


def runs_for(
    method: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int
) -> dict[str, Callable[[], Any]]:
    d = Defense(method, LinfBall(0.2), steps=steps, step_size=0.01)
    plain = textbook_model(model)
    runs: dict[str, Callable[[], Any]] = {
        "defpert": lambda: defend(model, x, y, d),
        "plain loop": lambda: textbook_defend(plain, x, y, d),
    }
    if method in ("ce", "anti-adversary"):
        try:
            import torchattacks

            ta = torchattacks.PGD(model, eps=0.2, alpha=0.01, steps=steps, random_start=False)
            ta.set_mode_targeted_by_label(quiet=True)
            target = y if method == "ce" else predict(model, x)
            runs["torchattacks"] = lambda: ta(x, target)
        except ImportError:
            pass
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--methods", default=",".join(DEFENSES))
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10, mean=0.1307, std=0.3081).eval()
    x, y = mnist_batch(args.batch)
    Schedule(args.steps, 0.01)  # validates
    rows = []
    for method in args.methods.split(","):
        seconds = interleaved(runs_for(method, model, x, y, args.steps), reps=args.reps)
        rate = {name: args.batch * args.steps / median(s) for name, s in seconds.items()}
        over = {k: rate["defpert"] / v for k, v in rate.items() if k != "defpert"}
        rows.append({"method": method, "image_steps_per_s": rate, "defpert_over": over})
        print(
            f"{method:15s} " + "  ".join(f"{k} {v:7.0f}" for k, v in rate.items())
            + "  | defpert / " + ", ".join(f"{k} {v:.2f}x" for k, v in over.items()),
            flush=True,
        )  # fmt: skip
    emit(
        {"benchmark": "defense_throughput", "batch": args.batch, "steps": args.steps,
         "reps": args.reps, "machine": machine(), "rows": rows},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
