"""The model zoo: every model is an ordinary ``nn.Module`` that takes pixels in [0, 1],
shape (B, C, H, W), and returns logits (B, classes). Input normalisation is the first layer
(mean and std as buffers), so attacks and defenses never need to know about it.

Adding an architecture is one entry of :data:`ARCHITECTURES`: a function of the input shape
and the number of classes that returns the layers after the normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from defpert.errors import DefpertError


class Normalize(nn.Module):
    """Standardise [0, 1] pixels inside the model: ``(x - mean) / std``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x - self.mean) / self.std
        # The zoo's convolutions are channels-last (see build_model); images with several
        # channels are laid out to match. For one channel both layouts are the same memory.
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out


# Max-pooling before the ReLU: relu(maxpool(z)) == maxpool(relu(z)) exactly (both are
# monotone), gradients included, and the ReLU then touches a quarter of the values. The
# layer indices, hence the checkpoints, are the same as with the usual ReLU-then-pool.


def _cnn(in_shape: tuple[int, int, int], classes: int) -> nn.Sequential:
    """The classic MNIST CNN: conv3x3(32), conv3x3(64), max-pool, dense 128, dense 10."""
    c, h, w = in_shape
    flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.MaxPool2d(2),
        nn.ReLU(), nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, classes),
    )  # fmt: skip


def _madry(in_shape: tuple[int, int, int], classes: int) -> nn.Sequential:
    """Madry et al.'s MNIST challenge network: conv5x5(32), pool, conv5x5(64), pool,
    dense 1024, dense 10 (padded convolutions, as its ``SAME`` padding); about 3.3 M
    weights against the ``cnn``'s 1.2 M, for radii the small one cannot hold."""
    c, h, w = in_shape
    flat = 64 * (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(flat, 1024), nn.ReLU(),
        nn.Linear(1024, classes),
    )  # fmt: skip


def _lenet(in_shape: tuple[int, int, int], classes: int) -> nn.Sequential:
    """LeNet-5 (padded convolutions, so it fits 28x28 and 8x8 inputs alike)."""
    c, h, w = in_shape
    flat = 16 * (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(6, 16, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(flat, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, classes),
    )  # fmt: skip


def _mlp(in_shape: tuple[int, int, int], classes: int) -> nn.Sequential:
    """Two hidden layers of 256 units."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, classes),
    )  # fmt: skip


ARCHITECTURES: dict[str, Callable[[tuple[int, int, int], int], nn.Sequential]] = {
    "cnn": _cnn,
    "madry": _madry,
    "lenet": _lenet,
    "mlp": _mlp,
}


def build_model(
    name: str,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    *,
    mean: float = 0.0,
    std: float = 1.0,
) -> nn.Sequential:
    """Build an untrained model of the named architecture that takes [0, 1] pixels.

    Convolution weights are channels-last: oneDNN's convolutions, the max-pooling and the
    ReLUs are then ~30 % faster for the attack loop on a CPU (benchmarks/pgd_throughput.py).
    """
    try:
        body = ARCHITECTURES[name](tuple(input_shape), num_classes)  # type: ignore[arg-type]
    except KeyError:
        raise DefpertError(
            f"unknown model {name!r}; choose one of: {', '.join(ARCHITECTURES)}"
        ) from None
    model = nn.Sequential(Normalize(mean, std), *body)
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
