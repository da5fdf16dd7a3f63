"""``defpert train --precision bf16`` against fp32: the same seed and data, 1 and 3 epochs of
the ``cnn`` on MNIST, each a fresh process; test accuracy (n = 10,000, with its interval) and
training images per second.

    python benchmarks/train_precision.py [--epochs 1,3] [--limit N] [--json FILE]

Goal (issue 42): where bf16 is native, >= 1.5x fp32's speed with test accuracy within 0.3
points; only then may it become the default. Run it on a quiet machine (the JSON records the
load average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, machine

from defpert.wording import wilson


def train_once(epochs: int, precision: str, limit: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        extra = ["--limit", str(limit)] if limit else []
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "defpert", "train", "--dataset", "mnist", "--epochs",
             str(epochs), "--precision", precision, "--no-progress", "--out", out, *extra],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ,
        )  # fmt: skip
        wall = time.perf_counter() - start
        metrics = json.loads(Path(out, "metrics.json").read_text())
    right = round(metrics["test_accuracy"] * metrics["n_test"])
    return {"epochs": epochs, "precision": precision, "wall_s": round(wall, 1),
            "train_s": round(metrics["train_seconds"], 1),
            "images_per_s": round(metrics["train_images_per_second"]),
            "test_accuracy": metrics["test_accuracy"], "n_test": metrics["n_test"],
            "interval95": wilson(right, metrics["n_test"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="1,3")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for epochs in (int(e) for e in args.epochs.split(",")):
        fp32, bf16 = (train_once(epochs, p, args.limit) for p in ("fp32", "bf16"))
        rows += [fp32, bf16]
        rows.append({"epochs": epochs, "speedup": round(bf16["images_per_s"] / fp32["images_per_s"], 2),
                     "accuracy_points": round(100 * (bf16["test_accuracy"] - fp32["test_accuracy"]), 2)})  # fmt: skip
    emit({"benchmark": "train_precision", "machine": machine(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
