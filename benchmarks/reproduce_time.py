"""Wall time of ``defpert reproduce`` (``--quick`` by default, ``--full`` for the full study).

    python benchmarks/reproduce_time.py [--full] [--dataset mnist] [--out DIR]

Runs the command in a fresh run directory (the dataset must be fetched; the model is
trained as part of the run) and reports the wall time and each stage's seconds (training,
each threat model's RQ1, the sweeps), read from the run directory, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, machine


def stage_seconds(run: Path) -> dict[str, float]:
    """Seconds each saved stage took (training from the model's metrics)."""
    out: dict[str, float] = {}
    metrics = run / "model" / "metrics.json"
    if metrics.is_file():
        out["train"] = json.loads(metrics.read_text()).get("train_seconds", 0.0)
    for stage in sorted((run / "stages").glob("*.json")):
        out[stage.stem] = json.loads(stage.read_text()).get("seconds", 0.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full study (10,000 images)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    run = Path(args.out or tempfile.mkdtemp(prefix="defpert-reproduce-")) / "run"
    command = [sys.executable, "-m", "defpert", "reproduce", "--dataset", args.dataset,
               "--out", str(run), "--no-progress"] + ([] if args.full else ["--quick"])  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"reproduce failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    stages = stage_seconds(run)
    emit(
        {"benchmark": "reproduce_time", "full": args.full, "dataset": args.dataset,
         "wall_seconds": wall, "stage_seconds": stages, "run": str(run), "machine": machine()},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
