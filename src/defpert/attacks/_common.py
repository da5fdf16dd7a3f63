"""Helpers shared by the attacks: chunking, runs with restarts, gradients of a per-example
loss, the box."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from defpert.attacks.journal import Resume, offer_runs_done, runs_already_done
from defpert.core.threat import ThreatModel, clip_to_both_balls, clip_to_box
from defpert.runtime import threads
from defpert.runtime.devices import model_device


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(n)`` (each one a point
    where the thread count may follow the machine's load: ``defpert.runtime.threads``)."""
    for lo in range(0, n, size):
        threads.adapt()
        yield slice(lo, min(lo + size, n))


def project(
    threat: ThreatModel, x: torch.Tensor, point: torch.Tensor, anchor: torch.Tensor | None = None
) -> torch.Tensor:
    """The closest point to ``point`` in the threat model's ball around ``x`` and in [0, 1]
    (and, given an ``anchor``, a point within eps of it too: see ``clip_to_both_balls``)."""
    delta = clip_to_box(x, threat.project(point - x))
    return x + (delta if anchor is None else clip_to_both_balls(x, delta, anchor, threat))


def rows(mask: torch.Tensor) -> torch.Tensor:
    """Indices (K,) of the true entries of a boolean mask (B,)."""
    return mask.nonzero().squeeze(1)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits without a graph, as float32."""
    with torch.no_grad():
        return model(x).float()


def logits_in_chunks(model: nn.Module, x: torch.Tensor, size: int) -> torch.Tensor:
    """Logits (N, classes) without a graph of inputs ``x`` on any device, computed on the
    model's device ``size`` images at a time; returned on ``x``'s device."""
    device = model_device(model)
    if len(x) <= size:
        return logits_of(model, x.to(device)).to(x.device)
    return torch.cat([logits_of(model, x[part].to(device)).to(x.device)
                      for part in chunks(len(x), size)])  # fmt: skip


# One run's attack on a chunk: the chunk's rows, their target classes (None: untargeted)
# and random starts (None: from the clean input); it updates the attack's points and
# the rows still unbroken.
ChunkAttack = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], None]


def each_run(
    runs: Sequence[tuple[int, bool]],
    x: torch.Tensor,
    clean_logits: torch.Tensor,
    best: torch.Tensor,
    unbroken: torch.Tensor,
    threat: ThreatModel,
    generator: torch.Generator | None,
    size: int,
    resume: Resume | None,
    attack: ChunkAttack,
) -> None:
    """An attack's runs (restarts, and for a targeted one each target class) on the
    examples still unbroken: runs outside, chunks inside.

    ``runs`` lists each run's target rank (0: untargeted; k: the k-th most likely class of
    the clean input) and whether it starts at random. Each run's random starts are drawn
    for all the examples it attacks at once, so they do not depend on the chunk size
    (calibrated per machine), and a later run fills whole chunks with the examples still
    unbroken. A bookmark follows each run; ``resume`` continues after the last one.
    """
    first = runs_already_done(resume, best, unbroken)
    for done, (rank, random_start) in enumerate(runs[first:], start=first):
        target_all = clean_logits.sort(dim=1)[1][:, -rank] if rank else None
        idx = rows(unbroken)
        if len(idx) == 0:
            return
        starts = threat.random_init(x[idx].shape, generator) if random_start else None
        for part in chunks(len(idx), size):
            sel = idx[part]
            attack(sel, target_all[sel] if target_all is not None else None,
                   starts[part] if starts is not None else None)  # fmt: skip
        offer_runs_done(resume, done + 1, best, unbroken)
