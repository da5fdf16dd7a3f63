"""Does reduced precision change a study's numbers? Two finished ``defpert dp`` runs of the
same command, one ``--precision fp32`` and one ``--precision bf16``, compared version by
version on the same examples: accuracy in each, the examples whose verdict differs, and
how far apart the two runs' points lie.

    python precision_agreement.py RUN_FP32 RUN_BF16 [--json FILE]

Every accuracy is computed here again, in fp32, with the runs' own checkpoint, so only the
points differ. A 2,000-example check of this kind decides whether ``--precision auto`` may
use bf16 (``defpert.study.dp.PRECISION_TOLERANCE``: 0.5 points).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from _benchmarks import emit, machine

from defpert.core.evaluate import correct
from defpert.models import load_checkpoint
from defpert.study.dp import PRECISION_TOLERANCE
from defpert.study.store import load_npz

VERSIONS = ("adversarial", "{defense}/defensive", "{defense}/defensive-attacked")


def _settings(run: Path) -> dict[str, Any]:
    """The run's command settings, the dp settings flattened into them."""
    if not (run / "metrics.json").is_file():
        sys.exit(f"{run} is not a finished `defpert dp` run (no metrics.json)")
    saved = json.loads((run / "config.json").read_text())
    return {**{k: v for k, v in saved.items() if k != "dp"}, **saved["dp"]}


def compare(run_a: Path, run_b: Path) -> dict[str, Any]:
    config_a, config_b = _settings(run_a), _settings(run_b)
    differing = {k for k in config_a if k != "precision" and config_a[k] != config_b.get(k)}
    if differing:
        sys.exit(f"the two runs differ in more than precision: {', '.join(sorted(differing))}")
    model, _ = load_checkpoint(config_a["checkpoint"])
    split = config_a["split"]
    names = [v.format(defense=d) for v in VERSIONS for d in config_a["defenses"]]
    rows = []
    for name in dict.fromkeys(names):  # "adversarial" once, whatever the defenses
        path_a = run_a / "versions" / split / f"{name}.npz"
        path_b = run_b / "versions" / split / f"{name}.npz"
        if not (path_a.is_file() and path_b.is_file()):
            continue
        (xa, ya), (xb, yb) = load_npz(path_a), load_npz(path_b)
        if not (ya == yb).all():
            sys.exit(f"{name}: the two runs hold other examples")
        images_a, images_b = torch.from_numpy(xa), torch.from_numpy(xb)
        labels = torch.from_numpy(ya).long()
        right_a, right_b = correct(model, images_a, labels), correct(model, images_b, labels)
        rows.append({
            "version": name, "n": len(labels),
            "accuracy": {config_a["precision"]: float(right_a.float().mean()),
                         config_b["precision"]: float(right_b.float().mean())},
            "difference_points": 100 * float(right_b.float().mean() - right_a.float().mean()),
            "verdicts_differ": int((right_a != right_b).sum()),
            "largest_pixel_difference": float((images_a - images_b).abs().max()),
        })  # fmt: skip
    worst = max((abs(r["difference_points"]) for r in rows), default=float("nan"))
    return {
        "benchmark": "precision_agreement",
        "runs": [str(run_a), str(run_b)],
        "precisions": [config_a["precision"], config_b["precision"]],
        "threat": {k: config_a[k] for k in ("norm", "eps", "steps", "step_size")},
        "checkpoint": config_a["checkpoint"],
        "dataset": config_a["dataset"],
        "rows": rows,
        "largest_difference_points": worst,
        "tolerance_points": 100 * PRECISION_TOLERANCE,
        "within_tolerance": worst <= 100 * PRECISION_TOLERANCE,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="the fp32 run")
    parser.add_argument("run_b", type=Path, help="the reduced-precision run of the same command")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = compare(args.run_a, args.run_b)
    for r in result["rows"]:
        a, b = r["accuracy"].values()
        print(f"{r['version']:<28} n={r['n']:,}  {100 * a:6.2f} %  {100 * b:6.2f} %  "
              f"{r['difference_points']:+.2f} pp  verdicts differ: {r['verdicts_differ']}")  # fmt: skip
    print(f"largest difference {result['largest_difference_points']:.2f} pp; tolerance "
          f"{result['tolerance_points']:.1f} pp: "
          + ("within" if result["within_tolerance"] else "NOT within"))  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
