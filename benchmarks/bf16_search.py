"""The strong suite searching in bfloat16 with float32 verdicts, against the float32 suite on
the same examples: its speed and whether it is ever more optimistic.

    python benchmarks/bf16_search.py --checkpoint shipped:mnist-cnn-pgd --eps 0.2 --n 500
    python benchmarks/bf16_search.py --checkpoint runs/cnn --eps 0.2 --n 500 [--tier standard]

One process, the first ``--n`` MNIST test images, L-inf ``--eps`` from the natural image, the
same seed: the suite with ``search="fp32"`` and with ``search="bf16"`` (run in the order
given by ``--order``), each timed, its robust accuracy and per-example verdicts compared, the
contested examples (claimed by the bf16 search, refused by the fp32 verdict) counted, and the
seconds of the float32 cascade run on them. Goal (issue 42): >= 1.8x faster where bf16 is
native, never more optimistic than fp32 by more than 0.2 points.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import emit, machine

from defpert.attacks import StrongConfig, strong_attack
from defpert.attacks.search import FALLBACK
from defpert.core.threat import make_threat
from defpert.data import load_split
from defpert.models import load_checkpoint
from defpert.runtime.devices import pick_device
from defpert.wording import wilson


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="shipped:mnist-cnn-pgd")
    parser.add_argument("--norm", default="linf")
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--tier", default="standard")
    parser.add_argument("--square-queries", type=int, default=None)
    parser.add_argument("--order", default="bf16,fp32")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = pick_device()  # a GPU when there is one
    model, _ = load_checkpoint(args.checkpoint, map_location=device)
    test = load_split("mnist", "test", progress=False)  # real images: accuracies depend on them
    x, y = test.images[: args.n], test.labels[: args.n]
    threat = make_threat(args.norm, args.eps)
    runs = {}
    for search in args.order.split(","):
        config = StrongConfig(args.tier, square_queries=args.square_queries, search=search)
        start = time.perf_counter()
        result = strong_attack(model, x, y, threat=threat, config=config, progress=True)
        seconds = time.perf_counter() - start
        fallback = sum(s for name, s in result.seconds.items() if name.startswith(FALLBACK))
        right = int(result.robust.sum())
        runs[search] = (result, {
            "seconds": round(seconds, 1), "robust": right, "accuracy": right / args.n,
            "interval95": wilson(right, args.n), "contested": result.contested,
            "fallback_seconds": round(fallback, 1), "broken_by": result.broken_by,
        })  # fmt: skip
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    emit(
        {"benchmark": "bf16_search", "machine": machine(), "checkpoint": args.checkpoint,
         "threat": {"norm": args.norm, "eps": args.eps, "from": "the natural image"},
         "n": args.n, "tier": args.tier, "config": {**config.describe(), "search": "each of runs"},
         "runs": {name: row for name, (_, row) in runs.items()},
         "speedup": round(runs["fp32"][1]["seconds"] / runs["bf16"][1]["seconds"], 2),
         "optimism_points": round(100 * (float(bf16.robust.float().mean())
                                         - float(fp32.robust.float().mean())), 2),
         "robust_only_under_bf16": int((bf16.robust & ~fp32.robust).sum()),
         "robust_only_under_fp32": int((fp32.robust & ~bf16.robust).sum())},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
