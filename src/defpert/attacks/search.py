"""The arithmetic an attack *searches* in, apart from the one its verdicts are given in.

An attack is a search: every point it proposes is judged by the model, and a point judged
in float32 is a valid verdict whichever arithmetic found it. So the strong suite and the
adaptive attack may run their forward and backward passes in bfloat16 (``search="bf16"``,
about twice as fast where the device computes it natively) while every candidate is
classified by the float32 model and the worst case is taken over those verdicts only.

What bfloat16 can cost is strength, never soundness: an attack that believes, in bfloat16, it
has crossed the boundary stops pushing that example, and the float32 verdict may say it did
not. Such examples are *contested*. And a bfloat16 gradient can simply be weaker, claiming
nothing. After the bfloat16 cascade the same cascade runs again in float32 from the suite's
seed: its first attack (APGD-CE, the suite's cheapest and strongest) on every example still
standing, the others on the contested ones, so an example bfloat16 could only half-break
gets the float32 suite's full search.
"""

from __future__ import annotations

import torch
from torch import nn

from defpert.attacks.cascade import Stage
from defpert.attacks.journal import Resume
from defpert.errors import DefpertError
from defpert.runtime.devices import model_device, native_bf16

SEARCHES = ("fp32", "bf16", "auto")  # auto: see resolve_search
FALLBACK = "fp32-"  # the prefix of the float32 cascade's stage names on contested examples


def check_search(name: str) -> str:
    """Refuse an unknown search arithmetic in one line."""
    if name not in SEARCHES:
        raise DefpertError(
            f"unknown search precision {name!r}; choose one of: {', '.join(SEARCHES)}"
        )
    return name


def resolve_search(name: str, device: torch.device) -> str:
    """``auto`` made concrete for ``device``: bf16 on a CPU that computes it natively (the
    strong suite 2.09-2.25x faster on an AMX Xeon), fp32 elsewhere, a GPU included: on an
    H200 the study's ``cnn`` is launch-bound and the bf16 search ran at 0.87x of fp32's
    speed (benchmarks/results/bf16-search-*-h200.json)."""
    if check_search(name) == "auto":
        return "bf16" if device.type == "cpu" and native_bf16(device) else "fp32"
    return name


class Bf16Search(nn.Module):
    """``model`` under bfloat16 autocast, its logits returned as float32: what the attacks
    search with. Never used for a verdict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # a new module is in training mode; taking the model's keeps e.g. the chunk
        # calibration, which restores the mode it found, from switching dropout on
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(model_device(self.model).type, dtype=torch.bfloat16):
            out = self.model(x)
        return out.float()


def searcher(model: nn.Module, search: str) -> nn.Module:
    """The model the attacks search with for a concrete ``search`` ("fp32" or "bf16")."""
    if search == "auto":
        raise DefpertError("search precision 'auto' is resolved for a device first")
    return Bf16Search(model) if check_search(search) == "bf16" else model


def on_contested(stage: Stage, contested: torch.Tensor, x: torch.Tensor) -> Stage:
    """A cascade stage that attacks only the contested ones among the examples it is given
    and hands back the others' inputs unchanged (which the verdict finds still correct)."""

    def run(idx: torch.Tensor, resume: Resume | None) -> torch.Tensor:
        points = x[idx].clone()
        mine = contested[idx]
        if mine.any():
            points[mine] = stage(idx[mine], resume)
        return points

    return run


def reseeding(run: Stage, generator: torch.Generator, seed: int) -> Stage:
    """``run``, with ``generator`` seeded with ``seed`` first, unless it resumes from a
    bookmark inside itself (the generator then holds the bookmark's state)."""

    def first(idx: torch.Tensor, resume: Resume | None) -> torch.Tensor:
        if resume is None or resume.start is None:
            generator.manual_seed(seed)
        return run(idx, resume)

    return first
