"""PGD throughput (image-steps per second): defpert against torchattacks and ART.

    python benchmarks/pgd_throughput.py [--batch 128,512,2048] [--steps 10] [--reps 3]

Same model (the ``cnn`` of the zoo), same MNIST images, same batch, same steps; the
implementations run interleaved in one process and the medians are compared. Also
reported: a plain PGD loop (the textbook one: whole batch at once, a standard
channels-first cnn with ReLU before pooling, parameters left trainable) to show what
defpert's levers buy, the fraction of the machine's fp32 matmul rate reached, the chunk size
the calibration chose on this machine (``defpert.runtime.calibrate``) with the rate measured at each
candidate, and defpert with the whole batch as one chunk.

torchattacks is installed without its dependencies: ``pip install --no-deps torchattacks``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import emit, flops_per_image_step, interleaved, machine, median, peak_gflops
from torch import nn

from defpert.attacks import pgd
from defpert.core.threat import L2Ball, LinfBall
from defpert.models import build_model
from defpert.runtime.devices import pick_device
from defpert.testing import art_classifier, textbook_model, textbook_pgd

SETTINGS = {"linf": (LinfBall(0.2), 0.01), "l2": (L2Ball(2.5), 0.075)}


def mnist_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST test images (repeated if needed); random pixels without MNIST."""
    try:
        from defpert.data import load_split

        test = load_split("mnist", "test", progress=False)
        reps = -(-n // len(test))
        return test.images.repeat(reps, 1, 1, 1)[:n], test.labels.repeat(reps)[:n]
    except Exception:  # no MNIST on this machine: the timing does not depend on the pixels
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def implementations(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, steps: int
) -> dict[str, Callable[[], Any]]:
    threat, step = SETTINGS[norm]
    plain = textbook_model(model)
    runs: dict[str, Callable[[], Any]] = {
        "defpert": lambda: pgd(model, x, y, threat=threat, steps=steps, step_size=step),
        "defpert, whole batch": lambda: pgd(
            model, x, y, threat=threat, steps=steps, step_size=step, batch_size=len(x)
        ),
        "plain loop": lambda: textbook_pgd(plain, x, y, threat, steps, step),
    }
    try:
        import torchattacks

        cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
        ta = cls(model, eps=threat.eps, alpha=step, steps=steps, random_start=False)
        runs["torchattacks"] = lambda: ta(x, y)
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        art = ProjectedGradientDescentPyTorch(
            art_classifier(model, x, 10), norm=np.inf if norm == "linf" else 2, eps=threat.eps,
            eps_step=step, max_iter=steps, num_random_init=0, batch_size=len(x), verbose=False,
        )  # fmt: skip
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    runs["art"] = lambda: art.generate(x=x_np, y=y_np)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="128,512,2048")
    parser.add_argument("--norms", default="linf,l2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = pick_device()
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10, mean=0.1307, std=0.3081).eval()
    flops = flops_per_image_step(model, (1, 28, 28))  # counted on the CPU copy
    model = model.to(device)
    peak = peak_gflops(device=device)
    from defpert.runtime import calibrate

    chosen = calibrate.chunk_size(model, (1, 28, 28), device)
    alternatives = calibrate.measure(model, (1, 28, 28), device)
    print(f"chunk: {chosen} (the calibration's choice; DEFPERT_CHUNK overrides); one PGD step "
          "at each size, image-steps/s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in alternatives.items()), flush=True)  # fmt: skip
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        x, y = mnist_batch(batch)
        x, y = x.to(device), y.to(device)  # on a GPU every peer starts from device memory
        for norm in args.norms.split(","):
            seconds = interleaved(implementations(model, x, y, norm, args.steps), reps=args.reps)
            rate = {name: batch * args.steps / median(s) for name, s in seconds.items()}
            row: dict[str, Any] = {"batch": batch, "norm": norm, "image_steps_per_s": rate}
            row["defpert_over"] = {
                k: rate["defpert"] / v for k, v in rate.items() if k != "defpert"
            }
            row["fraction_of_fp32_limit"] = rate["defpert"] * flops / (peak * 1e9)
            rows.append(row)
            print(
                f"batch {batch:5d} {norm:4s} " + "  ".join(f"{k} {v:7.0f}" for k, v in rate.items())
                + "  | defpert / " + ", ".join(f"{k} {v:.2f}x" for k, v in row["defpert_over"].items())
                + f"  | {row['fraction_of_fp32_limit']:.0%} of limit",
                flush=True,
            )  # fmt: skip
    emit(
        {
            "benchmark": "pgd_throughput",
            "model": "cnn",
            "steps": args.steps,
            "reps": args.reps,
            "mflops_per_image_step": flops / 1e6,
            "peak_fp32_gflops": peak,
            "limit_image_steps_per_s": peak * 1e9 / flops,
            "machine": machine(),
            "chunk": {"chosen": chosen, "alternatives": alternatives},
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
