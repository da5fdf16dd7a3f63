"""Model zoo and safe checkpoints.

Every model is an ordinary ``nn.Module`` that takes pixels in [0, 1], shape (B, C, H, W),
and returns logits (B, classes). Input normalisation is the first layer (mean and std as
buffers), so attacks and defenses never need to know about it.

A checkpoint is a directory with ``model.safetensors`` (weights only: loading it cannot
execute code) and ``model.json`` (the card: what the weights are, how they were made).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defpert.errors import DefpertError
from defpert.runs import read_json, write_atomic, write_json

CARD_FORMAT = "defpert-checkpoint/1"


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


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a result."""
    import numpy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "defpert": _defpert_version(),
    }


def environment(device: torch.device | str) -> dict[str, Any]:
    """Where a result was computed: library versions, device, threads and processes.

    Results repeat exactly for the same command, seed and environment; the thread count
    can change float rounding in training (it reorders weight-gradient sums).
    """
    from defpert import distributed

    return {"library_versions": library_versions(), "device": str(device),
            "threads": torch.get_num_threads(), "processes": distributed.world_size()}  # fmt: skip


def _defpert_version() -> str:
    from defpert import __version__

    return __version__


def save_checkpoint(
    model: nn.Module, run_dir: str | os.PathLike[str], card: dict[str, Any]
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir`` atomically."""
    from safetensors.torch import save_file

    run = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(run / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    full = {
        "format": CARD_FORMAT,
        **card,
        "library_versions": library_versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(run / "model.json", full)
    return run


def read_card(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint's card (``shipped:NAME`` names a shipped one)."""
    from defpert.shipped import resolve

    run = resolve(run_dir)
    if not run.exists():
        raise DefpertError(f"checkpoint {run} does not exist")
    if run.is_file() and run.name not in ("model.json", "model.safetensors"):
        raise DefpertError(
            f"{run} is a file, not a defpert checkpoint: give the run directory that holds "
            "model.safetensors and model.json"
        )
    card_path = run / "model.json" if run.is_dir() else run.with_name("model.json")
    if not card_path.is_file():
        raise DefpertError(f"{run} is not a defpert checkpoint (no model.json)")
    card = read_json(card_path)
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise DefpertError(f"{card_path} is not a defpert checkpoint card")
    for key in ("architecture", "input_shape", "num_classes"):
        if key not in card:
            raise DefpertError(f"{card_path} lacks {key!r}")
    return card


def load_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    expect_input_shape: tuple[int, ...] | None = None,
    expect_dataset: str | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model from a checkpoint directory, without executing anything from the files.

    ``expect_input_shape`` refuses a checkpoint made for other inputs (e.g. a digits model
    asked to classify MNIST); ``expect_dataset`` one trained on another dataset of the same
    shape (a Fashion-MNIST model asked to classify MNIST scores near chance, silently).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from defpert.shipped import resolve

    run = resolve(run_dir)
    if not run.exists():
        raise DefpertError(f"checkpoint {run} does not exist")
    if run.is_file() and run.name not in ("model.json", "model.safetensors"):
        read_card(run)  # says what is wrong with the file
    run = run if run.is_dir() else run.parent
    card = read_card(run)
    shape = tuple(int(s) for s in card["input_shape"])
    if expect_input_shape is not None and tuple(expect_input_shape) != shape:
        raise DefpertError(
            f"checkpoint {run} was made for inputs of shape {shape} "
            f"({card.get('dataset', '?')}), not {tuple(expect_input_shape)}"
        )
    trained_on = card.get("dataset")
    if expect_dataset is not None and trained_on is not None and trained_on != expect_dataset:
        raise DefpertError(
            f"checkpoint {run} was trained on {trained_on}, not {expect_dataset}; "
            f"pass --dataset {trained_on}"
        )
    model = build_model(
        card["architecture"], shape, int(card["num_classes"]),  # type: ignore[arg-type]
        mean=card.get("normalization", {}).get("mean", 0.0),
        std=card.get("normalization", {}).get("std", 1.0),
    )  # fmt: skip
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise DefpertError(f"{run} is not a defpert checkpoint (no model.safetensors)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DefpertError(f"{weights} is not a valid safetensors file: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DefpertError(
            f"{weights} does not match architecture {card['architecture']!r}: {first}"
        ) from None
    # load_state_dict copies into the parameters where they are, so the model itself moves
    model.to(map_location).eval()
    return model, card


def checkpoint_digest(run_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of a checkpoint's weights file: which exact model a result came from."""
    from defpert.runs import file_sha256
    from defpert.shipped import resolve

    run = resolve(run_dir)
    return file_sha256((run if run.is_dir() else run.parent) / "model.safetensors")
