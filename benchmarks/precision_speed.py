"""bfloat16 against float32 on this machine: does `--precision bf16` pay here?

    python benchmarks/precision_speed.py [--batch 512] [--steps 10] [--reps 5] [--json FILE]

Two measurements, each interleaved fp32 / bf16 in one process (medians compared, so a busy
machine slows both alike): a square matrix product (the arithmetic oneDNN can do in each
type), and defpert's PGD on the shipped PGD-trained MNIST ``cnn`` (L-inf 0.3, steps of 0.01,
the first ``--batch`` MNIST test images, the calibrated chunk), where bf16 means the forward
and backward passes under autocast and the perturbation in fp32. Whether bf16 may be used
for a study's numbers is a separate question, answered per study by ``--precision auto``
(``precision_agreement.py``). The CPU's flags (AVX-512 BF16, AMX) are recorded beside the
rates, because the answer depends on them: oneDNN emulates bf16 on an AVX2 CPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from _common import emit, interleaved, machine, median
from pgd_throughput import mnist_batch

from defpert.attacks import pgd
from defpert.core.threat import LinfBall
from defpert.models import load_checkpoint
from defpert.runtime.devices import pick_device


def matmul_runs(size: int, device: torch.device) -> dict[str, Callable[[], Any]]:
    a32 = torch.randn(size, size, device=device)
    b32 = torch.randn(size, size, device=device)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    return {"fp32": lambda: a32 @ b32, "bf16": lambda: a16 @ b16}


def pgd_runs(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int
) -> dict[str, Callable[[], Any]]:
    def attack(precision: str) -> Callable[[], Any]:
        return lambda: pgd(model, x, y, threat=LinfBall(0.3), steps=steps, step_size=0.01,
                           precision=precision)  # fmt: skip

    return {"fp32": attack("fp32"), "bf16": attack("bf16")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--matmul", type=int, default=2048, help="side of the square product")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    device = pick_device()
    seconds = interleaved(matmul_runs(args.matmul, device), reps=args.reps)
    gflops = {k: 2 * args.matmul**3 / median(v) / 1e9 for k, v in seconds.items()}
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v:,.1f}" for k, v in gflops.items()), flush=True)

    model, _ = load_checkpoint("shipped:mnist-cnn-pgd", map_location=device)
    x, y = mnist_batch(args.batch)
    seconds = interleaved(pgd_runs(model, x, y, args.steps), reps=args.reps)
    rate = {k: args.batch * args.steps / median(v) for k, v in seconds.items()}
    print("PGD image-steps/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in rate.items())
          + f"  | bf16 / fp32 {rate['bf16'] / rate['fp32']:.2f}x", flush=True)  # fmt: skip
    emit(
        {
            "benchmark": "precision_speed",
            "threads": torch.get_num_threads(),
            "matmul": {"size": args.matmul, "gflops": gflops,
                       "bf16_over_fp32": gflops["bf16"] / gflops["fp32"]},  # fmt: skip
            "pgd": {"model": "shipped:mnist-cnn-pgd", "batch": args.batch, "steps": args.steps,
                    "threat": "linf 0.3 from the natural image, steps of 0.01",
                    "image_steps_per_s": rate, "bf16_over_fp32": rate["bf16"] / rate["fp32"]},
            "reps": args.reps,
            "machine": machine(),
        },
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
