"""Training's thread policy beside other work: its time, quiet and beside a busy loop, and
whether the same command gave the same weights.

    python benchmarks/training_threads.py [--limit 20000] [--busy 1]

For each policy the benchmark runs ``defpert train --epochs 1`` (the ``cnn`` on the first
``--limit`` MNIST training images, a fresh process each time) on the machine as it is, then
beside ``--busy`` single-threaded busy loops of its own, and hashes the weights:

* ``hold every core`` (PyTorch's count, fixed for the run): today's default;
* ``hold every core, passive waits``: the same with ``OMP_WAIT_POLICY=PASSIVE``, so that a
  thread waiting at the end of a parallel region sleeps instead of spinning on the core the
  late thread needs;
* ``one thread``: ``--threads 1``, the count a loaded machine would pick.

The weights of a run beside the busy loops must equal the quiet run's of the same policy;
the table also says whether the policies' weights equal each other (they differ when the
thread count does: a weight's gradient sums over the batch, split by thread). Run it on a
quiet machine: anything else running adds to the load (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, machine

from defpert.runtime.threads import available_cores, load_average

POLICIES: dict[str, tuple[dict[str, str], list[str]]] = {
    "hold every core": ({}, []),
    "hold every core, passive waits": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "one thread": ({}, ["--threads", "1"]),
}


def train_once(limit: int, env: dict[str, str], flags: list[str]) -> tuple[float, str]:
    """Seconds of one ``defpert train`` epoch and the sha256 of its weights."""
    with tempfile.TemporaryDirectory() as out:
        environment = {**os.environ, **env}
        environment.pop("DEFPERT_THREADS", None)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "defpert", "train", "--dataset", "mnist", "--epochs", "1",
             "--limit", str(limit), "--no-progress", "--out", out, *flags],
            check=True, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        digest = hashlib.sha256(Path(out, "model.safetensors").read_bytes()).hexdigest()
    return seconds, digest[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--busy", type=int, default=1)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    quiet = {name: train_once(args.limit, *policy) for name, policy in POLICIES.items()}
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(args.settle)
        loaded = {name: train_once(args.limit, *policy) for name, policy in POLICIES.items()}
    finally:
        for loop in loops:
            loop.kill()
    for name in POLICIES:
        (q, qh), (b, bh) = quiet[name], loaded[name]
        rows.append({"policy": name, "quiet_s": round(q, 1), "busy_s": round(b, 1),
                     "busy_over_quiet": round(b / q, 2),
                     "over_fastest_quiet": round(b / min(s for s, _ in quiet.values()), 2),
                     "same_weights_busy_and_quiet": qh == bh, "weights": qh})  # fmt: skip
    emit(
        {"benchmark": "training_threads", "machine": machine(), "cores": available_cores(),
         "limit": args.limit, "busy_loops": args.busy, "load_before": load_before,
         "rows": rows},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
