"""Ways to run the PGD loop on a GPU, where small models are launch-bound: defpert's engine
in eager PyTorch, the same loop with the model under ``torch.compile``, and one PGD step
captured as a CUDA graph and replayed; torchattacks' PGD as the peer, all on one model.

    python benchmarks/attack_loop.py [--batch 512,2048] [--steps 20] [--reps 3]

Image-steps per second (medians of ``--reps``, interleaved); each variant's final points
are checked against the eager loop's (the largest difference in a pixel), so that a faster
variant that computes something else shows. On a CPU the CUDA graph is skipped. Issue 42:
on an H100 the eager loop reached 35 % of the fp32 limit, 0.74-0.89x torchattacks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from _common import emit, machine, synchronize
from pgd_throughput import mnist_batch
from torch import nn

from defpert.attacks import pgd
from defpert.core.threat import make_threat
from defpert.models import load_checkpoint
from defpert.runtime.devices import frozen_parameters, pick_device


def plain_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
               eps: float, step: float) -> None:  # fmt: skip
    """One L-inf PGD step on ``delta`` in place (the loop a CUDA graph captures)."""
    loss = nn.functional.cross_entropy(model(x + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    with torch.no_grad():
        delta.add_(grad.sign(), alpha=step).clamp_(-eps, eps)
        delta.copy_((x + delta).clamp_(0, 1) - x)


def eager_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, eps: float,
               step: float) -> torch.Tensor:  # fmt: skip
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        plain_step(model, x, y, delta, eps, step)
    return (x + delta).detach()


def graphed_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, eps: float,
                 step: float) -> Callable[[], torch.Tensor]:  # fmt: skip
    """The step captured once on static buffers; each call replays it ``steps`` times."""
    static_x, static_y = x.clone(), y.clone()
    delta = torch.zeros_like(x, requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the graph, as CUDA graphs need
            plain_step(model, static_x, static_y, delta, eps, step)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plain_step(model, static_x, static_y, delta, eps, step)

    def run() -> torch.Tensor:
        with torch.no_grad():
            delta.zero_()
        for _ in range(steps):
            graph.replay()
        return (static_x + delta).detach()

    # The graph reads its buffers by address: they must outlive it (a freed label buffer,
    # reused by the next allocation, once gave the loss labels out of range).
    run.buffers = (static_x, static_y, delta, graph)  # type: ignore[attr-defined]
    return run


def measure_batch(model: nn.Module, device: torch.device, batch: int, steps: int, reps: int,
                  variants: list[str]) -> dict[str, object]:  # fmt: skip
    """Every variant of ``variants`` on the first ``batch`` MNIST test images."""
    eps, step = EPS, STEP
    threat = make_threat("linf", eps)
    x, y = mnist_batch(batch)
    x, y = x.to(device), y.to(device)
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    if "defpert" in variants:
        runs["defpert"] = lambda: pgd(model, x, y, threat=threat, steps=steps, step_size=step,
                                      batch_size=len(x))  # fmt: skip
    if "eager" in variants:
        runs["plain eager loop"] = lambda: eager_loop(model, x, y, steps, eps, step)
    if "compile" in variants:
        compiled = torch.compile(model)
        runs["plain loop, torch.compile"] = lambda: eager_loop(compiled, x, y, steps, eps, step)
    if "graph" in variants and device.type == "cuda":
        runs["plain loop, CUDA graph"] = graphed_loop(model, x, y, steps, eps, step)
    if "torchattacks" in variants:
        try:
            import torchattacks

            ta = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=False)
            runs["torchattacks"] = lambda: ta(x, y)
        except ImportError:
            pass
    reference = eager_loop(model, x, y, steps, eps, step)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    differences, failed, accuracy = {}, {}, {}
    for name, run in list(runs.items()):  # warm-up (compiles), and the check
        try:
            out = run()
            differences[name] = float((out.to(device) - reference).abs().max())
            with torch.no_grad():
                accuracy[name] = float((model(out.to(device)).argmax(1) == y).float().mean())
        except Exception as err:  # a variant that does not run here is reported
            failed[name] = f"{type(err).__name__}: {str(err)[:300]}"
            del runs[name], rates[name]
    for _ in range(reps):
        for name, run in runs.items():
            synchronize()
            started = time.perf_counter()
            run()
            synchronize()
            rates[name].append(batch * steps / (time.perf_counter() - started))
    medians = {name: round(statistics.median(r)) for name, r in rates.items()}
    peer = medians.get("torchattacks")
    return {
        "batch": batch, "image_steps_per_second": medians,
        "over_torchattacks": {name: round(v / peer, 2) for name, v in medians.items()}
        if peer else None,
        "largest_pixel_difference_from_eager": differences, "failed": failed,
        "accuracy_on_the_attacked_points": accuracy,
    }  # fmt: skip


EPS, STEP = 0.2, 0.01
VARIANTS = "defpert,eager,compile,graph,torchattacks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="512,2048")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", default=VARIANTS, help=f"some of {VARIANTS}")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    device = pick_device()
    # the shipped PGD-trained cnn: the attacked points' accuracy then says whether each
    # variant attacks as well as the eager loop (on a GPU their points differ in the last bits)
    model, _ = load_checkpoint("shipped:mnist-cnn-pgd", map_location=device)
    model.eval()
    variants = args.variants.split(",")
    rows = []
    with frozen_parameters(model):
        for batch in (int(b) for b in args.batch.split(",")):
            rows.append(measure_batch(model, device, batch, args.steps, args.reps, variants))
            print(rows[-1], file=sys.stderr, flush=True)
    emit({"benchmark": "attack_loop", "machine": machine(), "device": str(device),
          "model": "cnn", "variants": variants,
          "threat": {"norm": "linf", "eps": EPS, "step": STEP, "from": "the natural image"},
          "steps": args.steps, "reps": args.reps, "rows": rows}, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
