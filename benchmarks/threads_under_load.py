"""PGD throughput when other programs keep cores busy: one thread, every core, and the
count ``defpert.runtime.threads`` picks, beside torchattacks at PyTorch's default.

    python benchmarks/threads_under_load.py [--busy 0,1] [--batch 128,512] [--settle 120]

For each entry of ``--busy`` the benchmark starts that many single-threaded busy loops of
its own, waits ``--settle`` seconds so that the one-minute load average sees them, reads
the thread count that ``defpert.runtime.threads.free_cores`` picks from that load (what the
``defpert`` command does at its start), then times PGD on the zoo's ``cnn`` (MNIST test
images) interleaved in one process: defpert at one thread, at every core, at the picked
count, and torchattacks at every core (its users' default). Anything else running on the
machine adds to the load: the JSON records the load average before the busy loops start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import torch
from _common import emit, interleaved, machine, median
from pgd_throughput import mnist_batch

from defpert.attacks import pgd
from defpert.core.threat import LinfBall
from defpert.models import build_model
from defpert.runtime.threads import available_cores, free_cores, load_average

THREAT, STEP = LinfBall(0.2), 0.01


def at_threads(count: int, fn: Any) -> Any:
    def run() -> Any:
        torch.set_num_threads(count)
        return fn()

    return run


def measure(batch: int, steps: int, reps: int, picked: int) -> dict[str, float]:
    model = build_model("cnn").eval()
    x, y = mnist_batch(batch)
    cores = available_cores()
    attack = lambda: pgd(model, x, y, threat=THREAT, steps=steps, step_size=STEP)  # noqa: E731
    runs = {
        "defpert, 1 thread": at_threads(1, attack),
        f"defpert, {cores} threads": at_threads(cores, attack),
        f"defpert, picked ({picked})": at_threads(picked, attack),
    }
    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=THREAT.eps, alpha=STEP, steps=steps, random_start=False)
        runs[f"torchattacks, {cores} threads"] = at_threads(cores, lambda: ta(x, y))
    except ImportError:
        pass
    seconds = interleaved(runs, reps=reps)
    return {name: batch * steps / median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="0,1", help="busy loops to start, per setting")
    parser.add_argument("--batch", default="128,512")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds to wait after starting the busy loops")  # fmt: skip
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()

    result: dict[str, Any] = {"machine": machine(), "load_before": load_average(),
                              "steps": args.steps, "threat": "linf 0.2", "settings": []}  # fmt: skip
    for busy in [int(b) for b in args.busy.split(",")]:
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                 for _ in range(busy)]  # fmt: skip
        try:
            if busy:
                time.sleep(args.settle)
            load = load_average()
            picked = free_cores(available_cores(), load, own=0.0)
            rows = {b: measure(b, args.steps, args.reps, picked)
                    for b in [int(v) for v in args.batch.split(",")]}  # fmt: skip
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
        setting = {"busy_loops": busy, "load_average": round(load, 2), "picked": picked,
                   "image_steps_per_second": {str(b): {k: round(v) for k, v in r.items()}
                                              for b, r in rows.items()}}  # fmt: skip
        result["settings"].append(setting)
        print(f"busy loops {busy}, load {load:.2f}, picked {picked} threads", file=sys.stderr)
        for b, r in rows.items():
            shown = ", ".join(f"{k} {v:.0f}" for k, v in r.items())
            print(f"  batch {b}: {shown}", file=sys.stderr)
    emit(result, args.json)


if __name__ == "__main__":
    main()
