"""The progress of a long attack cascade, so that an interrupted run continues it.

The strong suite and the adaptive attack are cascades: attacks run one after another, each
on the examples still unbroken, drawing from one generator. After each attack the cascade
hands its state to a :class:`Journal` (the run directory keeps it in a file); a rerun that
finds the state of the same cascade skips the attacks done and restores the generator, so
its result equals the uninterrupted run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class CascadeState:
    """An unfinished cascade, as saved after each attack so that a rerun continues it: the
    attacks done (plan order), the worst points and survivors so far, and the generator's
    state for the next attack. Continuing from it gives the uninterrupted run's results."""

    done: list[str]
    worst: torch.Tensor
    robust: torch.Tensor
    broken_by: dict[str, int]
    seconds: dict[str, float]
    generator: torch.Tensor

    def continues(self, x: torch.Tensor, plan: list[str]) -> bool:
        """Whether this state belongs to a cascade of ``plan`` on inputs shaped like ``x``."""
        return (self.worst.shape == x.shape and self.robust.shape == (len(x),)
                and self.done == plan[: len(self.done)])  # fmt: skip


class Journal(Protocol):
    """Where a long cascade keeps its progress (e.g. a file beside a run's results)."""

    def read(self) -> CascadeState | None: ...

    def write(self, state: CascadeState) -> None: ...
