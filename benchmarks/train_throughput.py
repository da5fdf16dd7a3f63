"""Training throughput (images per second) of ``defpert train`` for the ``cnn``.

    python benchmarks/train_throughput.py [--images 12800] [--reps 3]

defpert's training loop (the zoo's cnn: channels-last, pooling before the ReLU) against
the textbook loop (channels-first cnn, ReLU then pool), same optimiser, batch and data,
interleaved in one process, medians of one epoch over ``--images`` MNIST images.
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from _common import emit, interleaved, machine, median
from pgd_throughput import mnist_batch

from defpert.data import Split, get_spec
from defpert.models import build_model
from defpert.testing import textbook_model
from defpert.train import TrainConfig, _fit


def textbook_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for i in range(0, len(x), batch):
        loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    x, y = mnist_batch(args.images)
    spec = get_spec("mnist")
    data = Split(x, y, spec)
    val = Split(x[:10], y[:10], spec)
    cfg = TrainConfig(epochs=1, batch_size=args.batch)
    torch.manual_seed(0)
    ours = build_model("cnn", (1, 28, 28), 10, mean=0.1307, std=0.3081)
    plain = textbook_model(ours)
    cpu = torch.device("cpu")
    seconds = interleaved(
        {
            "defpert": lambda: _fit(ours, data, val, cfg, cpu, progress=False),
            "plain loop": lambda: textbook_epoch(plain, x, y, args.batch),
        },
        reps=args.reps,
    )
    rate = {name: args.images / median(s) for name, s in seconds.items()}
    print(f"defpert {rate['defpert']:.0f} images/s, plain loop {rate['plain loop']:.0f} "
          f"images/s: {rate['defpert'] / rate['plain loop']:.2f}x", flush=True)  # fmt: skip
    emit(
        {"benchmark": "train_throughput", "images": args.images, "batch": args.batch,
         "images_per_s": rate, "defpert_over_plain": rate["defpert"] / rate["plain loop"],
         "machine": machine()},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
