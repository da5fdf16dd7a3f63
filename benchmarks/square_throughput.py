"""Square Attack throughput (query-images per second): defpert against torchattacks.

    python benchmarks/square_throughput.py [--n 1000] [--queries 100] [--reps 3]

The strong suite's most expensive attack: on a robust model nearly every example survives
the gradient attacks and costs Square its full 5,000 forward passes. Same model (the shipped
PGD-trained MNIST ``cnn``, so that examples stay unbroken as in a real run), the first
``n`` MNIST test images, L-inf 0.3, the same number of queries; interleaved in one process,
medians compared. Rows: defpert (its forward passes in the measured chunk), defpert with
each query's forward pass over the whole batch (the layout before the chunked forward
pass), torchattacks' ``Square`` (the same batched design, AutoAttack's).

torchattacks is installed without its dependencies: ``pip install --no-deps torchattacks``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _common import emit, interleaved, machine, median
from pgd_throughput import mnist_batch

from defpert.attacks import square
from defpert.core.threat import LinfBall
from defpert.models import load_checkpoint
from defpert.models.shipped import resolve
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import pick_device

EPS = 0.3


def implementations(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, queries: int
) -> dict[str, Callable[[], Any]]:
    threat = LinfBall(EPS)

    def ours(**kw: Any) -> Callable[[], Any]:
        return lambda: square(model, x, y, threat=threat, queries=queries,
                              generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip

    runs = {"defpert": ours(), "defpert, whole-batch forward": ours(forward_chunk=len(x))}
    try:
        import torchattacks

        peer = torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=queries, n_restarts=1,
                                   p_init=0.8, loss="margin", resc_schedule=True, seed=0)  # fmt: skip
        runs["torchattacks"] = lambda: peer(x, y)
    except ImportError:
        pass
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = pick_device()
    model, _ = load_checkpoint(resolve("shipped:mnist-cnn-pgd"), map_location=device)
    model.eval()
    x, y = mnist_batch(args.n)
    x, y = x.to(device), y.to(device)
    chunk = chunk_size(model, tuple(x.shape[1:]), device)
    seconds = interleaved(implementations(model, x, y, args.queries), reps=args.reps)
    rate = {name: args.n * args.queries / median(s) for name, s in seconds.items()}
    over = {k: rate["defpert"] / v for k, v in rate.items() if k != "defpert"}
    print(f"n {args.n}, {args.queries} queries, forward chunk {chunk}: "
          + "  ".join(f"{k} {v:.0f}" for k, v in rate.items())
          + "  | defpert / " + ", ".join(f"{k} {v:.2f}x" for k, v in over.items()), flush=True)  # fmt: skip
    emit(
        {"benchmark": "square_throughput", "model": "shipped:mnist-cnn-pgd", "eps": EPS,
         "n": args.n, "queries": args.queries, "reps": args.reps, "forward_chunk": chunk,
         "query_images_per_s": rate, "defpert_over": over, "seconds": seconds,
         "machine": machine()},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
