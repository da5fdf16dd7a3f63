"""The progress of a long attack cascade, so that an interrupted run continues it.

The strong suite and the adaptive attack are cascades: attacks run one after another, each
on the examples still unbroken, drawing from one generator. After each attack the cascade
hands its state to a :class:`Journal` (the run directory keeps it in a file); a rerun that
finds the state of the same cascade skips the attacks done and restores the generator, so
its result equals the uninterrupted run's.

A long attack also leaves :class:`Bookmark` s inside itself (APGD and FAB after each target
class and restart, Square every so many queries), at most once per ``Journal.interval``
seconds: on a CPU one attack of the ``standard`` suite can run for an hour, and a rerun then
continues it from its last bookmark instead of from its start, with the same result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from defpert.runtime import distributed


@dataclass
class Bookmark:
    """Where a running attack stands inside itself: its position (plain integers, in the
    attack's own terms) and the tensors it needs to go on from there."""

    position: dict[str, int]
    tensors: dict[str, torch.Tensor]

    def fits(self, keys: set[str], **shapes: int) -> bool:
        """Whether this bookmark has the ``keys`` positions and, for each named tensor, that
        many rows: an attack ignores (and restarts) a bookmark that is not its own."""
        return keys <= set(self.position) and all(
            name in self.tensors and len(self.tensors[name]) == rows
            for name, rows in shapes.items()
        )


class Resume:
    """A running attack's link to its cascade's journal: the bookmark it left in an
    interrupted run (``start``; None: begin at the beginning), and :meth:`offer` to leave a
    new one at a point where its state is complete. Writing a bookmark draws nothing and
    changes nothing, so the attack's result is the same with or without one."""

    def __init__(
        self, start: Bookmark | None, write: Callable[[Bookmark], None], interval: float
    ) -> None:
        self.start = start
        self._write = write
        self._interval = interval
        self._last = time.monotonic()

    def offer(self, make: Callable[[], Bookmark]) -> None:
        """Write the bookmark ``make()`` if ``interval`` seconds have passed since the last."""
        # Under torchrun every rank runs the cascade and writes together: rank 0's clock decides.
        if distributed.main_decides(time.monotonic() - self._last >= self._interval):
            self._write(make())
            self._last = time.monotonic()


class StageClock:
    """A cascade stage's wall time in ``seconds[name]``, counting the time an interrupted
    run spent in it before its last bookmark."""

    def __init__(self, seconds: dict[str, float], name: str, *, continued: bool) -> None:
        self.seconds, self.name = seconds, name
        self.before = seconds.get(name, 0.0) if continued else 0.0
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.seconds[self.name] = round(self.before + time.perf_counter() - self.started, 3)

    def then(self, save: Callable[[Bookmark], None]) -> Callable[[Bookmark], None]:
        """``save``, with the time so far recorded first."""

        def timed(bookmark: Bookmark) -> None:
            self.stop()
            save(bookmark)

        return timed


@dataclass
class CascadeState:
    """An unfinished cascade, as saved after each attack so that a rerun continues it: the
    attacks done (plan order), the worst points and survivors so far, and the generator's
    state for the next attack; ``running``, when the state was saved inside the next attack,
    that attack's bookmark (the generator's state is then the one at the bookmark).
    Continuing from it gives the uninterrupted run's results."""

    done: list[str]
    worst: torch.Tensor
    robust: torch.Tensor
    broken_by: dict[str, int]
    seconds: dict[str, float]
    generator: torch.Tensor
    running: Bookmark | None = None
    contested: torch.Tensor | None = None  # see Cascade.contested
    passes: dict[str, int] | None = None  # the running pass count (core.passes) when saved

    def continues(self, x: torch.Tensor, plan: list[str]) -> bool:
        """Whether this state belongs to a cascade of ``plan`` on inputs shaped like ``x``,
        and can be trusted: finite points in the input's dtype, boolean verdicts, a random
        generator's state that a generator accepts (a damaged journal means starting over)."""
        return (self.worst.shape == x.shape and self.worst.dtype == x.dtype
                and self.robust.shape == (len(x),) and self.robust.dtype == torch.bool
                and self.done == plan[: len(self.done)]
                and (self.contested is None or (self.contested.shape == (len(x),)
                                                and self.contested.dtype == torch.bool))
                and bool(torch.isfinite(self.worst).all()) and _usable_generator(self.generator))  # fmt: skip


def _usable_generator(state: torch.Tensor) -> bool:
    """Does a CPU generator accept ``state`` (a byte tensor of the right length)?"""
    if state.dtype != torch.uint8 or state.dim() != 1:
        return False
    try:
        torch.Generator().set_state(state)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


class Journal(Protocol):
    """Where a long cascade keeps its progress (e.g. a file beside a run's results), and how
    often (seconds) a running attack may leave a bookmark in it."""

    interval: float

    def read(self) -> CascadeState | None: ...

    def write(self, state: CascadeState) -> None: ...


# Attacks made of runs (APGD's and FAB's target classes and restarts), each on the examples
# still unbroken: a bookmark after each run holds the best points so far and the survivors.
RUNS_DONE = "runs_done"


def runs_already_done(resume: Resume | None, best: torch.Tensor, unbroken: torch.Tensor) -> int:
    """How many runs an interrupted attack finished, by its bookmark, with ``best`` and
    ``unbroken`` restored in place; 0 (and both untouched) without a bookmark of its own."""
    mark = resume.start if resume is not None else None
    if mark is None or not mark.fits({RUNS_DONE}, best=len(best), unbroken=len(unbroken)):
        return 0
    best.copy_(mark.tensors["best"])
    unbroken.copy_(mark.tensors["unbroken"])
    return mark.position[RUNS_DONE]


def offer_runs_done(
    resume: Resume | None, runs: int, best: torch.Tensor, unbroken: torch.Tensor
) -> None:
    """Leave a bookmark after ``runs`` runs (when the journal's interval has passed)."""
    if resume is not None:
        resume.offer(lambda: Bookmark({RUNS_DONE: runs}, {"best": best, "unbroken": unbroken}))
