"""An attack's or a defense's cost in forward and backward passes of the classifier, per
example: the machine-independent measure by which attack benchmarks (A3, MALT,
AttackBench) compare attacks, beside the wall time, which depends on the machine.

A pass counts one image through the classifier; a backward pass one image whose gradient
went back through it. Passes made inside a defense, a bf16 search or a wrapper all reach the
classifier and are counted there.

>>> with counting(model) as passes:
...     pgd(model, x, y, threat=LinfBall(0.3), steps=10, step_size=0.03)
>>> passes.per_example(len(x))   # {'forward': 10.0, 'backward': 10.0}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from defpert.runtime import calibrate


@dataclass
class Passes:
    """Images through the classifier's forward pass, and back through it."""

    forward: int = 0
    backward: int = 0

    def per_example(self, n: int) -> dict[str, float]:
        """Both counts divided by ``n`` examples, rounded for a report."""
        if n <= 0:
            return {"forward": 0.0, "backward": 0.0}
        return {"forward": round(self.forward / n, 2), "backward": round(self.backward / n, 2)}

    def since(self, before: Passes) -> Passes:
        """The passes counted after ``before`` was copied."""
        return Passes(self.forward - before.forward, self.backward - before.backward)

    def copy(self) -> Passes:
        return Passes(self.forward, self.backward)


# The counters running (outermost first), so that a journal can keep the count beside its
# progress and a rerun continue it (a resumed run then reports the uninterrupted run's
# cost), and so that work split between torchrun ranks is counted whole on each of them.
_RUNNING: ContextVar[tuple[Passes, ...]] = ContextVar("defpert_passes", default=())


def counted_so_far() -> dict[str, int] | None:
    """The innermost running counter's totals (None when nothing counts), for a journal."""
    running = _RUNNING.get()
    return {"forward": running[-1].forward, "backward": running[-1].backward} if running else None


def continue_count(saved: object) -> None:
    """Set the innermost running counter to the totals a journal kept with the progress it
    resumes (the passes before the journal was written, the work it saves included); a
    journal without them, or nothing counting, leaves the count as it is."""
    running = _RUNNING.get()
    if not running or not isinstance(saved, dict):
        return
    forward, backward = saved.get("forward"), saved.get("backward")
    if isinstance(forward, int) and isinstance(backward, int) and min(forward, backward) >= 0:
        running[-1].forward, running[-1].backward = forward, backward


def add_elsewhere(forward: int, backward: int) -> None:
    """Add passes made outside this process (the other torchrun ranks' share of a split
    computation) to every running counter, so that each rank reports the whole cost, the
    same as one process would, rather than its share of it."""
    for passes in _RUNNING.get():
        passes.forward += forward
        passes.backward += backward


@contextlib.contextmanager
def counting(model: nn.Module) -> Iterator[Passes]:
    """Count the passes through ``model`` inside the block (hooks removed on exit)."""
    passes = Passes()

    def on_forward(module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or calibrate.MEASURING.get():
            return
        images = len(output)
        passes.forward += images
        if output.requires_grad:

            def on_backward(grad: torch.Tensor) -> None:
                passes.backward += images

            output.register_hook(on_backward)

    handle = model.register_forward_hook(on_forward)
    running = _RUNNING.set((*_RUNNING.get(), passes))
    try:
        yield passes
    finally:
        _RUNNING.reset(running)
        handle.remove()
