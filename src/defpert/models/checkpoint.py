"""Safe checkpoints.

A checkpoint is a directory with ``model.safetensors`` (weights only: loading it cannot
execute code) and ``model.json`` (the card: what the weights are, how they were made).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defpert.errors import DefpertError
from defpert.models.shipped import resolve
from defpert.models.zoo import build_model
from defpert.runtime.rundir import read_json, write_atomic, write_json

CARD_FORMAT = "defpert-checkpoint/1"
# Bounds a card's shape must respect: beyond them it is a corrupt card, not a model (an
# absurd shape would otherwise ask for terabytes before anything checked it).
MAX_SIDE = 4096
MAX_CLASSES = 100_000


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
    from defpert.runtime import distributed

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
    shape, classes = card["input_shape"], card["num_classes"]
    if not isinstance(card["architecture"], str):
        raise DefpertError(
            f"{card_path}: 'architecture' must be a name, found {card['architecture']!r}"
        )
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_SIDE for d in shape)):  # fmt: skip
        raise DefpertError(
            f"{card_path}: 'input_shape' must be [channels, height, width] of positive integers "
            f"up to {MAX_SIDE:,}, found {shape!r}"
        )
    if not isinstance(classes, int) or isinstance(classes, bool) or not 2 <= classes <= MAX_CLASSES:
        raise DefpertError(
            f"{card_path}: 'num_classes' must be an integer from 2 to {MAX_CLASSES:,}, found {classes!r}"
        )
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
    norm = card.get("normalization", {})
    mean, std = norm.get("mean", 0.0), norm.get("std", 1.0)
    if not (isinstance(mean, (int, float)) and isinstance(std, (int, float))
            and math.isfinite(mean) and math.isfinite(std) and std > 0):  # fmt: skip
        raise DefpertError(
            f"{run}/model.json: normalization needs a finite mean and a positive finite std, "
            f"found mean {mean!r}, std {std!r}"
        )
    model = build_model(
        card["architecture"], shape, int(card["num_classes"]),  # type: ignore[arg-type]
        mean=mean, std=std,
    )  # fmt: skip
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise DefpertError(f"{run} is not a defpert checkpoint (no model.safetensors)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DefpertError(f"{weights} is not a valid safetensors file: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
                if unexpected else f"{reshaped[0]} has shape {tuple(state[reshaped[0]].shape)}, "
                f"the architecture {tuple(expected[reshaped[0]].shape)}")  # fmt: skip
        more = len(missing) + len(unexpected) + len(reshaped) - 1
        raise DefpertError(
            f"{weights} does not match architecture {card['architecture']!r}: {what}"
            + (f" (and {more} more)" if more else "")
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise DefpertError(
            f"{weights} holds NaN or infinite weights ({broken[0]}"
            + (f" and {len(broken) - 1} more" if len(broken) > 1 else "")
            + "): retrain or reinstall it"
        )
    model.load_state_dict(state)
    # load_state_dict copies into the parameters where they are, so the model itself moves
    model.to(map_location).eval()
    return model, card


def checkpoint_digest(run_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of a checkpoint's weights file: which exact model a result came from."""
    from defpert.runtime.rundir import file_sha256

    run = resolve(run_dir)
    return file_sha256((run if run.is_dir() else run.parent) / "model.safetensors")
