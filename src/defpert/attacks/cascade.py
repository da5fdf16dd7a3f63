"""The worst case per example over a list of attacks, each run only on the examples still
standing: the runner the strong suite and the adaptive attack share.

A cascade keeps, per example, whether it is still robust and (for the strong suite) the
point that broke it; after each attack it hands its state to a journal, and a rerun that
finds the state of the same cascade skips the attacks done and goes on inside the one
under way from its last bookmark (see :mod:`defpert.attacks.journal`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from defpert.attacks.journal import Bookmark, CascadeState, Journal, Resume, StageClock
from defpert.core.passes import continue_count, counted_so_far
from defpert.runtime.progress import ticking

# An attack of the cascade: (indices of the examples still robust, its resume link or None)
# -> candidate points for those examples.
Stage = Callable[[torch.Tensor, "Resume | None"], torch.Tensor]
# Judges candidates: (stage name, candidate points, their examples' indices) -> None, marking
# the examples they break in the cascade's state.
Absorb = Callable[[str, torch.Tensor, torch.Tensor], None]


@dataclass
class Cascade:
    """A cascade's state: which examples still stand, the points kept, what broke what."""

    robust: torch.Tensor  # (N,) bool
    points: torch.Tensor  # (N, C, H, W): the worst points so far (or the inputs, if none kept)
    generator: torch.Generator
    broken_by: dict[str, int] = field(default_factory=dict)  # stage name -> newly broken
    seconds: dict[str, float] = field(default_factory=dict)  # stage name -> wall time
    done: list[str] = field(default_factory=list)
    running: Bookmark | None = None  # the bookmark inside the next stage, from a journal
    # (N,) bool, for a cascade searching in another arithmetic than its verdicts': the
    # examples whose search claimed a break the verdict refused (see attacks.search)
    contested: torch.Tensor | None = None

    def resume(self, journal: Journal | None, x: torch.Tensor, names: list[str]) -> bool:
        """Take the state an interrupted run of the same cascade left in ``journal``."""
        state = journal.read() if journal is not None else None
        if state is None or not state.continues(x, names):
            return False
        self.points, self.robust = state.worst.clone(), state.robust.clone()
        self.broken_by, self.seconds = dict(state.broken_by), dict(state.seconds)
        self.generator.set_state(state.generator)
        self.done, self.running = list(state.done), state.running
        if self.contested is not None and state.contested is not None:
            self.contested.copy_(state.contested)  # in place: stages hold this tensor
        continue_count(state.passes)
        return True

    def save(self, journal: Journal, bookmark: Bookmark | None = None) -> None:
        journal.write(CascadeState(self.done, self.points, self.robust, self.broken_by,
                                   self.seconds, self.generator.get_state(), bookmark,
                                   self.contested, counted_so_far()))  # fmt: skip

    def run(
        self,
        stages: Sequence[tuple[str, Stage]],
        absorb: Absorb,
        journal: Journal | None = None,
        *,
        progress: bool = False,
        desc: str = "cascade",
    ) -> None:
        """Run the stages not done yet, in order, each on the examples still robust."""
        with tqdm(stages[len(self.done) :], desc=desc, disable=not progress,
                  leave=False) as bar, ticking(bar):  # fmt: skip
            for name, stage in bar:
                idx = self.robust.nonzero().squeeze(1)
                bar.set_postfix_str(f"{name}: {len(idx)} unbroken")
                if len(idx) == 0:
                    break
                clock = StageClock(self.seconds, name, continued=self.running is not None)
                resume = None
                if journal is not None:
                    resume = Resume(self.running, clock.then(lambda b: self.save(journal, b)),
                                    journal.interval)  # fmt: skip
                self.running = None
                absorb(name, stage(idx, resume), idx)
                clock.stop()
                self.done.append(name)
                if journal is not None:
                    self.save(journal)
