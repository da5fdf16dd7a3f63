"""Square Attack (Andriushchenko et al., ECCV 2020): a black-box, score-based random search.

It never looks at a gradient, so it is what catches a model whose gradients are masked,
zero or misleading (a quantiser, a defense that optimises at test time). Each query changes
one random square window of the current perturbation and keeps the change if the margin
``z_y - max_{j != y} z_j`` fell; the window shrinks on AutoAttack's schedule as queries are
spent.

Batched across examples as AutoAttack's ``square.py`` (MIT licence) is: one window position
per query, shared by every example of a chunk, so a query is one forward pass of the whole
chunk, not a Python loop per example (ART's Square loops per example and draws from
Python's unseeded ``random`` at L2). All randomness comes from a seeded CPU generator.

>>> x_adv = square(model, x, y, threat=LinfBall(0.3), queries=5000)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from defpert.attacks._common import chunks, logits_in_chunks, project, rows
from defpert.attacks.journal import Bookmark, Resume
from defpert.core.objectives import margin
from defpert.core.threat import ThreatModel, flat_norm
from defpert.errors import DefpertError
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import model_device

# The model's logits for a batch of images (no graph).
Forward = Callable[[torch.Tensor], torch.Tensor]

# Examples that share each query's random window (AutoAttack's design): a fixed number, so
# the draws, and the results, are the same on every machine.
SQUARE_CHUNK = 1000


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    queries: int = 5000,
    restarts: int = 1,
    p_init: float = 0.8,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    forward_chunk: int | None = None,
    anchor: torch.Tensor | None = None,
    resume: Resume | None = None,
) -> torch.Tensor:
    """Square Attack (margin loss, untargeted); returns one point of the ball per example (CPU).

    ``x`` (N, C, H, W) in [0, 1], ``y`` (N,). Each restart runs only on examples not yet
    misclassified. ``batch_size`` examples (default 1,000) share each query's random window;
    a query's forward pass runs in chunks of ``forward_chunk`` images (default: the engine's
    measured chunk, which keeps activations in cache: on the AVX2 CPU, forward passes of 896
    MNIST images ran 1.6x faster in chunks of 64 than whole). The chunks change no draw.
    With an ``anchor`` (N, C, H, W), every query is projected into the intersection of the
    balls around ``x`` and around the anchor, so the search runs where the threat model
    allows (a point found outside it and projected afterwards may no longer fool the model).
    ``resume`` takes bookmarks between queries and continues an interrupted attack from its
    last one, with the same result.
    """
    if queries < 1 or restarts < 1:
        raise DefpertError("Square needs at least 1 query and 1 restart")
    device = model_device(model)
    size = forward_chunk or chunk_size(model, tuple(x.shape[1:]), device)
    forward = functools.partial(logits_in_chunks, model, size=size)
    g = generator or torch.Generator().manual_seed(0)
    x, y = x.detach().cpu(), y.detach().cpu()
    out = x.clone()
    anchor = anchor.detach().cpu() if anchor is not None else None
    mark = _own_bookmark(resume, len(x))
    for p, part in enumerate(chunks(len(x), batch_size or SQUARE_CHUNK)):
        if mark is not None and p < mark.position["part"]:
            continue  # done before the interruption: its points are in the bookmark's ``out``
        xb, yb = x[part].to(device), y[part].to(device)
        ab = anchor[part].to(device) if anchor is not None else None
        best = xb.clone()
        unbroken = forward(xb).argmax(1) == yb
        first, at = 0, None
        if mark is not None:  # the chunk that was running: as it stood at the bookmark
            out = mark.tensors["out"].clone()
            best, unbroken = mark.tensors["best"].to(device), mark.tensors["unbroken"].to(device)
            first = mark.position["restart"]
            at = _RunState(mark.position["query"], mark.tensors["run_best"].to(device),
                           mark.tensors["run_margin"].to(device))  # fmt: skip
            mark = None
        for restart in range(first, restarts):
            idx = rows(unbroken)
            if len(idx) == 0:
                break
            run = _linf_run if threat.norm == "linf" else _l2_run
            inside = _feasible(threat, ab[idx] if ab is not None else None)
            keep = _Keeper(resume, p, restart, out, best, unbroken) if resume is not None else None
            adv = run(forward, xb[idx], yb[idx], threat.eps, queries, p_init, g, inside, at, keep)
            at = None
            best[idx] = adv
            unbroken[idx] = forward(adv).argmax(1) == yb[idx]
        out[part] = best.cpu()
    return out


@dataclass
class _RunState:
    """One run of the random search, as it stood before query ``query``: the points kept so
    far and their margins."""

    query: int
    best: torch.Tensor
    margin: torch.Tensor


class _Keeper:
    """Offers the journal a bookmark after each query of a run (written when its interval
    has passed): the chunk, restart and query, the finished chunks' points (``out``), the
    running chunk's points and survivors before this restart, and the run's state."""

    def __init__(self, resume: Resume, part: int, restart: int, out: torch.Tensor,
                 best: torch.Tensor, unbroken: torch.Tensor) -> None:  # fmt: skip
        self.resume, self.part, self.restart = resume, part, restart
        self.out, self.best, self.unbroken = out, best, unbroken

    def __call__(self, state: _RunState) -> None:
        self.resume.offer(lambda: Bookmark(
            {"part": self.part, "restart": self.restart, "query": state.query},
            {"out": self.out, "best": self.best.cpu(), "unbroken": self.unbroken.cpu(),
             "run_best": state.best.cpu(), "run_margin": state.margin.cpu()},
        ))  # fmt: skip


def _own_bookmark(resume: Resume | None, n: int) -> Bookmark | None:
    """The bookmark an interrupted Square on these ``n`` examples left, if any."""
    mark = resume.start if resume is not None else None
    if mark is None or not mark.fits({"part", "restart", "query"}, out=n):
        return None
    return mark


def _margin(forward: Forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` (B,): negative means misclassified."""
    return -margin(forward(x), y)


# Projects candidates (for the rows ``idx`` of the run's images ``x``) into the threat model.
Feasible = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _feasible(threat: ThreatModel, anchor: torch.Tensor | None) -> Feasible:
    """Candidates as they are (the run keeps them in the ball around ``x`` and in the box),
    or projected into the ball around the anchor as well."""
    if anchor is None:
        return lambda x, cand, idx: cand
    return lambda x, cand, idx: project(threat, x, cand, anchor[idx])


def _p_schedule(p_init: float, i: int, queries: int) -> float:
    """AutoAttack's schedule of the window's share of the image, rescaled to ``queries``."""
    it = int(i / queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                       (4000, 64), (6000, 128), (8000, 256)):  # fmt: skip
        if it <= bound:
            return p_init / div
    return p_init / 512


def _signs(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).float().to(device)


def _randint(high: int, g: torch.Generator) -> int:
    """A uniform integer in [0, high) (0 when ``high`` is 0, as for a window the image's size)."""
    return int(torch.randint(0, max(high, 1), (1,), generator=g))


def _linf_run(
    forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int, p_init: float,
    g: torch.Generator, inside: Feasible, at: _RunState | None = None,
    keep: Callable[[_RunState], None] | None = None,
) -> torch.Tensor:  # fmt: skip
    """One run on L-inf; from ``at`` (an interrupted run's state) when given, handing its
    state to ``keep`` after each query."""
    n, c, h, w = x.shape
    if at is None:
        every = torch.arange(n, device=x.device)
        best = (x + eps * _signs((n, c, 1, w), g, x.device)).clamp(0, 1)  # vertical stripes
        best = inside(x, best, every)
        at = _RunState(0, best, _margin(forward, best, y))
    best, margin = at.best, at.margin
    for i in range(at.query, queries):
        idx = rows(margin > 0)
        if len(idx) == 0:
            break
        side = min(max(int(round(math.sqrt(_p_schedule(p_init, i, queries) * h * w))), 1), h, w)
        vh, vw = _randint(h - side, g), _randint(w - side, g)
        change = torch.zeros(c, h, w, device=x.device)
        change[:, vh : vh + side, vw : vw + side] = 2.0 * eps * _signs((c, 1, 1), g, x.device)
        xi = x[idx]
        cand = torch.minimum(torch.maximum(best[idx] + change, xi - eps), xi + eps).clamp(0, 1)
        cand = inside(xi, cand, idx)
        new = _margin(forward, cand, y[idx])
        better = new < margin[idx]
        margin[idx] = torch.where(better, new, margin[idx])
        best[idx[better]] = cand[better]
        if keep is not None:
            keep(_RunState(i + 1, best, margin))
    return best


def _window_profile(s: int, device: torch.device, g: torch.Generator) -> torch.Tensor:
    """AutoAttack's L2 window: two half-windows of nested squares, opposite signs, unit norm."""

    def rectangles(a: int, b: int) -> torch.Tensor:
        d = torch.zeros(a, b, device=device)
        top, left = a // 2, b // 2
        for k in range(max(a // 2 + 1, b // 2 + 1)):
            d[max(top, 0) : min(top + 2 * k + 1, a), max(left, 0) : min(left + 2 * k + 1, b)] += (
                1.0 / (k + 1) ** 2
            )
            top, left = top - 1, left - 1
        return d / d.norm()

    d = torch.zeros(s, s, device=device)
    d[: s // 2] = rectangles(s // 2, s)
    d[s // 2 :] = -rectangles(s - s // 2, s)
    d = d / d.norm()
    return d.t() if bool(torch.rand(1, generator=g) > 0.5) else d


def _l2_run(
    forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float, queries: int, p_init: float,
    g: torch.Generator, inside: Feasible, at: _RunState | None = None,
    keep: Callable[[_RunState], None] | None = None,
) -> torch.Tensor:  # fmt: skip
    """One run on L2; ``at`` and ``keep`` as in :func:`_linf_run`."""
    n, c, h, w = x.shape
    if at is None:
        every = torch.arange(n, device=x.device)
        delta = torch.zeros_like(x)
        s = h // 5
        start = (h - s * 5) // 2
        for vh in range(start, start + s * (h // s), s):
            for vw in range(start, start + s * (w // s), s):
                profile = _window_profile(s, x.device, g).view(1, 1, s, s)
                patch = delta[:, :, vh : vh + s, vw : vw + s]
                if patch.shape[-2:] == (s, s):
                    delta[:, :, vh : vh + s, vw : vw + s] += profile * _signs(
                        (n, c, 1, 1), g, x.device
                    )
        best = inside(x, (x + delta / (flat_norm(delta) + 1e-12) * eps).clamp(0, 1), every)
        at = _RunState(0, best, _margin(forward, best, y))
    best, margin = at.best, at.margin
    for i in range(at.query, queries):
        idx = rows(margin > 0)
        if len(idx) == 0:
            break
        xi, cur = x[idx], best[idx] - x[idx]
        side = max(int(round(math.sqrt(_p_schedule(p_init, i, queries) * h * w))), 3)
        side = min(side + (side % 2 == 0), h, w)
        vh, vw = _randint(h - side, g), _randint(w - side, g)
        vh2, vw2 = _randint(h - side, g), _randint(w - side, g)
        window = (slice(None), slice(None), slice(vh, vh + side), slice(vw, vw + side))
        window2 = (slice(None), slice(None), slice(vh2, vh2 + side), slice(vw2, vw2 + side))
        mask = torch.zeros_like(cur)
        mask[window] = 1.0
        mask[window2] = 1.0
        norm_window = cur[window].pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_image = flat_norm(cur)
        norm_windows = (cur * mask).pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
        new = _window_profile(side, x.device, g).view(1, 1, side, side) * _signs(
            (len(idx), c, 1, 1), g, x.device
        )
        new = new + cur[window] / (norm_window + 1e-12)
        room = ((eps**2 - norm_image**2).clamp_min(0) / c + norm_windows**2).sqrt()
        new = new / (new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt() + 1e-12) * room
        cur[window2] = 0.0
        cur[window] = new
        cand = inside(xi, (xi + cur / (flat_norm(cur) + 1e-12) * eps).clamp(0, 1), idx)
        value = _margin(forward, cand, y[idx])
        better = value < margin[idx]
        margin[idx] = torch.where(better, value, margin[idx])
        best[idx[better]] = cand[better]
        if keep is not None:
            keep(_RunState(i + 1, best, margin))
    return best
