"""Robust checkpoints shipped with defpert, so nobody has to repeat hours of training.

    defpert dp --checkpoint shipped:mnist-cnn-pgd ...
    defpert models                      # what is shipped, with each card's accuracies

Each lives in ``defpert/models/checkpoints/<name>/`` (``model.safetensors`` and its card
``model.json``, written by ``defpert train`` itself); ``checkpoints/index.json`` records the
SHA-256 of its weights, the exact command that made it, the code it ran on and what was
measured. The hash is checked before every use: weights that do not match are refused.
``reproduce`` uses a shipped checkpoint whenever its training settings equal the study's
(:func:`defpert.train.matching_shipped`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from defpert.errors import DefpertError
from defpert.runtime.rundir import copy_atomic, file_sha256, read_json

SHIPPED_DIR = Path(__file__).parent / "checkpoints"
INDEX = "index.json"
PREFIX = "shipped:"


def index(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every shipped checkpoint's record, by name (empty when none is shipped)."""
    path = (root or SHIPPED_DIR) / INDEX
    return read_json(path) if path.is_file() else {}


def verified(name: str, root: Path | None = None) -> Path:
    """The directory of shipped checkpoint ``name``, after checking its SHA-256."""
    root = root or SHIPPED_DIR
    records = index(root)
    if name not in records:
        known = ", ".join(sorted(records)) or "none"
        raise DefpertError(f"no shipped checkpoint {name!r}; shipped: {known}")
    folder = root / name
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DefpertError(f"shipped checkpoint {name!r} has no weights file ({weights})")
    expected = records[name]["sha256"]
    actual = file_sha256(weights)
    if actual != expected:
        raise DefpertError(
            f"shipped checkpoint {name!r} does not match its recorded SHA-256 "
            f"({actual[:12]}… instead of {expected[:12]}…); reinstall defpert or retrain it"
        )
    return folder


def resolve(checkpoint: str | os.PathLike[str]) -> Path:
    """A checkpoint argument as a directory: ``shipped:NAME`` verified, a path as given."""
    text = os.fspath(checkpoint)
    if text.startswith(PREFIX):
        return verified(text[len(PREFIX) :])
    return Path(text)


def install(name: str, into: Path, root: Path | None = None) -> Path:
    """Copy a verified shipped checkpoint (weights, card, training metrics) into ``into``."""
    folder = verified(name, root)
    into.mkdir(parents=True, exist_ok=True)
    for file in ("model.safetensors", "model.json", "metrics.json"):
        if (folder / file).is_file():
            copy_atomic(folder / file, into / file)
    return into
