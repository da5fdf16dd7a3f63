"""FAB (Croce and Hein, ICML 2020, "Minimally distorted adversarial examples with a fast
adaptive boundary attack"): a minimum-norm attack that linearises the decision boundary,
projects onto it, and steps back towards the clean input when it crosses.

Its geometry differs from PGD's (it searches for the nearest boundary point, not the
highest loss), so it breaks some examples the loss-based attacks miss; an example counts as
broken only if the point FAB finds lies within eps. ``targeted`` is AutoAttack's FAB-T (the
boundary to one class at a time, the 9 most likely other classes, one gradient per
iteration); untargeted FAB linearises the boundary to every class (one gradient per class).

Follows AutoAttack's ``fab_base.py``, ``fab_pt.py`` and ``fab_projections.py`` (MIT
licence); written here for the reasons given in :mod:`defpert.attacks.apgd`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from defpert.attacks._common import each_run, logits_in_chunks, logits_of, project, rows
from defpert.attacks.journal import Resume
from defpert.core.engine import frozen_parameters
from defpert.core.threat import ThreatModel
from defpert.errors import DefpertError
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import model_device


def fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    steps: int = 100,
    targeted: bool = True,
    targets: int = 9,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    anchor: torch.Tensor | None = None,
    resume: Resume | None = None,
) -> torch.Tensor:
    """FAB-T (``targeted``) or FAB; returns a point per example (CPU): the adversarial point
    found within eps, else the clean input.

    With an ``anchor`` (the natural images of defended inputs ``x``), a point counts only if
    it also lies within eps of the anchor: every misclassified iterate is projected into the
    intersection of the two balls and kept if it still fools the model, so a break found
    inside the intersection is never lost to a projection of the nearest point afterwards.
    ``resume`` takes a bookmark after each run (target class and restart) and continues an
    interrupted attack from its last one.
    """
    if steps < 1 or restarts < 1:
        raise DefpertError("FAB needs at least 1 step and 1 restart")
    device = model_device(model)
    size = batch_size or chunk_size(model, tuple(x.shape[1:]), device)
    x, y = x.detach().cpu(), y.detach().cpu()
    anchor = anchor.detach().cpu() if anchor is not None else None
    best = x.clone()
    if len(x) == 0:
        return best
    logits = logits_in_chunks(model, x, size)
    unbroken = logits.argmax(1) == y
    ranks = range(2, targets + 2) if targeted else [0]

    def attack(sel: torch.Tensor, target: torch.Tensor | None, start: torch.Tensor | None) -> None:
        xb, yb = x[sel].to(device), y[sel].to(device)
        ab = anchor[sel].to(device) if anchor is not None else None
        adv = _single_run(model, xb, yb, target.to(device) if target is not None else None,
                          threat, steps, start.to(device) if start is not None else None,
                          alpha_max, eta, beta, ab)  # fmt: skip
        within = threat.size(adv - xb) <= threat.eps * (1 + 1e-6)
        if ab is not None:
            within &= threat.size(adv - ab) <= threat.eps * (1 + 1e-6)
        wrong = ((logits_of(model, adv).argmax(1) != yb) & within).cpu()
        best[sel[wrong]] = adv[wrong.to(device)].cpu()
        unbroken[sel[wrong]] = False

    # a restart starts at random; the first run of each target from the clean input
    runs = [(rank, restart > 0) for rank in ranks for restart in range(restarts)]
    each_run(runs, x, logits, best, unbroken, threat, generator, size, resume, attack)
    return best


def _boundary(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logit differences ``z_j - z_y`` (B, K) and their gradients (B, K, C, H, W).

    Targeted: K = 1, the target class. Untargeted: K = classes, with the true class's
    difference set to 1e10 so it is never the nearest boundary.
    """
    with torch.enable_grad(), frozen_parameters(model):
        p = x.clone().requires_grad_(True)
        logits = model(p).float()
        if target is not None:
            u = torch.arange(len(x), device=x.device)
            diff = logits[u, target] - logits[u, y]
            grad = torch.autograd.grad(diff.sum(), p)[0]
            return diff.detach()[:, None], grad[:, None]
        classes = logits.shape[1]
        grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), p, retain_graph=k < classes - 1)[0]
                             for k in range(classes)], dim=1)  # fmt: skip
    logits = logits.detach()
    u = torch.arange(len(x), device=x.device)
    diff = logits - logits[u, y][:, None]
    dgrad = grads - grads[u, y][:, None]
    diff[u, y] = 1e10
    return diff, dgrad


def _single_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    threat: ThreatModel,
    steps: int,
    start: torch.Tensor | None,
    alpha_max: float,
    eta: float,
    beta: float,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """One FAB run: the nearest misclassified point found (or ``x``), or, given an
    ``anchor``, the last misclassified iterate that still fools once projected into both
    balls (or ``x``)."""
    n = len(x)
    shape = (-1, *([1] * (x.dim() - 1)))
    linf = threat.norm == "linf"
    u = torch.arange(n, device=x.device)
    best_adv, best_norm = x.clone(), torch.full((n,), 1e10, device=x.device)
    inside = x.clone()  # with an anchor: the last iterate that fools inside both balls
    x1, x0 = x.clone(), x.reshape(n, -1)
    if start is not None:  # a random start, half-way to the ball's surface
        t = start
        x1 = (x + 0.5 * threat.eps * t / threat.size(t).clamp_min(1e-12).view(shape)).clamp(0, 1)
    for _ in range(steps):
        with torch.no_grad():
            diff, dgrad = _boundary(model, x1, y, target)
            flat = dgrad.reshape(n, dgrad.shape[1], -1)
            dual = flat.abs().sum(-1) if linf else flat.norm(dim=-1)
            nearest = (diff.abs() / (dual + 1e-12)).argmin(dim=1)
            w = dgrad[u, nearest].reshape(n, -1)
            b = -diff[u, nearest] + (w * x1.reshape(n, -1)).sum(-1)
            proj = _project_linf if linf else _project_l2
            d = proj(torch.cat((x1.reshape(n, -1), x0)), torch.cat((w, w)), torch.cat((b, b)))
            d1, d2 = d[:n].view_as(x), d[n:].view_as(x)
            size = (d.abs().amax(1) if linf else d.norm(dim=1)).clamp_min(1e-8)
            a1, a2 = size[:n], size[n:]
            alpha = (a1 / (a1 + a2)).clamp(0, alpha_max).view(shape)
            x1 = ((x1 + eta * d1) * (1 - alpha) + (x + eta * d2) * alpha).clamp(0, 1)
            wrong = logits_of(model, x1).argmax(1) != y
            if wrong.any():
                i = rows(wrong)
                if anchor is not None:  # the iterate, projected into both balls, may still fool
                    candidate = project(threat, x[i], x1[i], anchor[i])
                    fools = logits_of(model, candidate).argmax(1) != y[i]
                    inside[i[fools]] = candidate[fools]
                norm = threat.size(x1[i] - x[i])
                closer = norm < best_norm[i]
                best_adv[i[closer]] = x1[i[closer]]
                best_norm[i] = torch.minimum(norm, best_norm[i])
                x1[i] = x[i] + (x1[i] - x[i]) * beta
    return best_adv if anchor is None else inside


def _project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest L-inf step ``d`` with ``w . (t + d) = b`` and ``t + d`` in [0, 1] (per row)."""
    w, b = w.clone(), b.clone()
    sign = 2 * ((w * t).sum(1) - b >= 0).float() - 1
    w.mul_(sign[:, None])
    b.mul_(sign)
    a = (w < 0).float()
    d = (a - t) * (w != 0).float()
    p = a - t * (2 * a - 1)
    indp = torch.argsort(p, dim=1)
    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)
    indp2 = indp.flip((1,))
    ws = w.gather(1, indp2)
    bs2 = -ws * d.gather(1, indp2)
    s = torch.cumsum(ws.abs(), dim=1)
    sb = torch.cumsum(bs2, dim=1) + b0[:, None]
    b2 = sb[:, -1] - s[:, -1] * p.gather(1, indp[:, 0:1]).squeeze(1)
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (~c_l)
    lb = torch.zeros(int(c2.sum()), device=t.device)
    ub = torch.full_like(lb, w.shape[1] - 1)
    indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        mid = torch.floor((lb + ub) / 2)
        mid_i = mid.long()[:, None]
        cur = indp_.gather(1, indp_.size(1) - 1 - mid_i)
        b2_ = (sb_.gather(1, mid_i) - s_.gather(1, mid_i) * p_.gather(1, cur)).squeeze(1)
        c = b_ - b2_ > 0
        lb, ub = torch.where(c, mid, lb), torch.where(c, ub, mid)
    lbl = lb.long()
    if c_l.any():
        lmbd = ((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1])).clamp_min(0)[:, None]
        d[c_l] = (2 * a[c_l] - 1) * lmbd
    lmbd = ((b[c2] - sb[c2, lbl]) / (-s[c2, lbl])).clamp_min(0)[:, None]
    d[c2] = torch.min(lmbd, d[c2]) * a[c2] + torch.max(-lmbd, d[c2]) * (1 - a[c2])
    return d * (w != 0).float()


def _project_l2(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest L2 step ``d`` with ``w . (t + d) = b`` and ``t + d`` in [0, 1] (per row)."""
    w = w.clone()
    c = (w * t).sum(1) - b
    sign = 2 * (c >= 0).float() - 1
    w.mul_(sign[:, None])
    c = c * sign
    r = torch.max(t / w, (t - 1) / w).clamp(min=-1e12, max=1e12)
    r.masked_fill_(w.abs() < 1e-8, 1e12)
    r[r == -1e12] *= -1
    rs, indr = torch.sort(r, dim=1)
    rs2 = F.pad(rs[:, 1:], (0, 1))
    rs.masked_fill_(rs == 1e12, 0)
    rs2.masked_fill_(rs2 == 1e12, 0)
    w3s = (w**2).gather(1, indr)
    w5 = w3s.sum(dim=1, keepdim=True)
    ws = w5 - torch.cumsum(w3s, dim=1)
    d = -(r * w)
    d.mul_((w.abs() > 1e-8).float())
    s = torch.cat((-w5 * rs[:, 0:1], torch.cumsum((-rs2 + rs) * ws, dim=1) - w5 * rs[:, 0:1]), 1)
    c4 = s[:, 0] + c < 0
    c3 = (d * w).sum(dim=1) + c > 0
    c2 = ~(c4 | c3)
    lb = torch.zeros(int(c2.sum()), device=t.device)
    ub = torch.full_like(lb, w.shape[1] - 1)
    s_, c_ = s[c2], c[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        mid = torch.floor((lb + ub) / 2)
        above = s_.gather(1, mid.long()[:, None]).squeeze(1) + c_ > 0
        lb, ub = torch.where(above, mid, lb), torch.where(above, ub, mid)
    lbl = lb.long()
    if c4.any():
        alpha = c[c4] / w5[c4].squeeze(-1)
        d[c4] = -alpha[:, None] * w[c4]
    if c2.any():
        alpha = (s[c2, lbl] + c[c2]) / ws[c2, lbl] + rs[c2, lbl]
        alpha[ws[c2, lbl] == 0] = 0
        c5 = (alpha[:, None] > r[c2]).float()
        d[c2] = d[c2] * c5 - alpha[:, None] * w[c2] * (1 - c5)
    return d * (w.abs() > 1e-8).float()
