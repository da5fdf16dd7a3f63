"""The layout of a ``dp`` run directory, stated once.

A run keeps each data version as ``versions/<split>/<piece>.npz`` (a defense's pieces in a
folder of its name), each stage's result and its progress under ``partial/<split>/``, and
its numbers in ``metrics.json`` (``metrics-<split>.json`` for another split). The store
writes by this module; ``tsne``, ``reproduce`` and ``--overwrite`` read by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A data version's name -> its piece under versions/<split>/ ({defense}: the defense's folder).
VERSIONS = {
    "original": "original",
    "adversarial": "adversarial",
    "strong-adversarial": "strong-adversarial",
    "defensive": "{defense}/defensive",
    "defensive-attacked": "{defense}/defensive-attacked",
    "defended-adversarial": "{defense}/defended-adversarial",
    "undo-attacked": "{defense}/undo-attacked",
}

# What a run writes (what --overwrite removes before a run of other settings).
OUTPUTS = ("versions", "partial", "metrics.json", "metrics-train.json", "metrics-val.json")


def piece(name: str, defense: str | None = None) -> str:
    """The store's name of data version ``name`` (of ``defense``, for a defense's own)."""
    return VERSIONS[name].format(defense=defense)


@dataclass(frozen=True)
class RunLayout:
    """Where one split of a ``dp`` run directory keeps each thing."""

    root: Path
    split: str = "test"

    @property
    def versions(self) -> Path:
        return self.root / "versions" / self.split

    @property
    def partial(self) -> Path:
        return self.root / "partial" / self.split

    @property
    def metrics(self) -> Path:
        name = "metrics.json" if self.split == "test" else f"metrics-{self.split}.json"
        return self.root / name

    def version(self, name: str, defense: str | None = None) -> Path:
        """The ``.npz`` file of data version ``name``."""
        return self.versions / f"{piece(name, defense)}.npz"
