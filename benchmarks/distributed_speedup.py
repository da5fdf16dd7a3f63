"""Speed-up of ``torchrun --nproc-per-node N -m defpert dp`` over one process.

    python benchmarks/distributed_speedup.py [--processes 2] [--limit 2000] [--checkpoint DIR]

The weak attack and the ``ce`` defensive perturbation (no strong suite) on the first
``--limit`` MNIST test images, with one thread per process, against one process with one
thread and one process with as many threads as processes. Also checks that the saved
arrays are identical. Without ``--checkpoint`` a one-epoch cnn is trained first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, machine


def run(argv: list[str], processes: int, threads: int) -> float:
    launcher = (
        ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)] if processes > 1 else []
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *launcher, "-m", "defpert", *argv],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--checkpoint")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="defpert-dist-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = str(work / "cnn")
        run(
            ["train", "--epochs", "1", "--out", checkpoint, "--no-progress"], 1, os.cpu_count() or 1
        )
    dp = ["dp", "-p", "linf", "-k", "20", "-e", "0.2", "-a", "0.01", "--defense", "ce",
          "--no-strong", "--limit", str(args.limit), "--checkpoint", checkpoint, "--no-progress"]  # fmt: skip
    n = args.processes
    seconds = {
        "1 process, 1 thread": run([*dp, "--out", str(work / "a")], 1, 1),
        f"1 process, {n} threads": run([*dp, "--out", str(work / "b")], 1, n),
        f"{n} processes, 1 thread each": run([*dp, "--out", str(work / "c")], n, 1),
    }
    identical = all(
        np.array_equal(
            np.load(f)["images"], np.load(work / "c" / f.relative_to(work / "a"))["images"]
        )
        for f in (work / "a").rglob("*.npz")
    )
    base = seconds["1 process, 1 thread"]
    result = {
        "benchmark": "distributed_speedup", "limit": args.limit, "processes": n,
        "seconds": seconds, "speedup_over_1_process_1_thread": {k: base / v for k, v in seconds.items()},
        "speedup_over_1_process_same_cores": seconds[f"1 process, {n} threads"] / seconds[f"{n} processes, 1 thread each"],
        "arrays_identical_to_1_process_1_thread": identical, "machine": machine(),
    }  # fmt: skip
    emit(result, args.json)


if __name__ == "__main__":
    main()
