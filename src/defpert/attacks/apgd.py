"""APGD (Croce and Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): PGD with momentum and a step size that halves
wherever the loss stops rising, so it needs no step-size tuning.

Losses: cross-entropy (``ce``), the difference-of-logits ratio (``dlr``, invariant to the
logits' scale, which defeats a model that only inflates its logits) and its targeted form
(``dlr-targeted``, towards one class at a time: APGD-T runs it for the 9 most likely other
classes).

Written on defpert's threat models rather than taken from a library: AutoAttack itself is
not on PyPI, torchattacks declares torchvision (whose PyPI build does not import beside the
CPU torch wheel), and ART's APGD works through numpy copies per batch and draws from
numpy's global RNG. This version follows AutoAttack's ``autopgd_base.py`` (MIT licence):
the same checkpoints (22 %, then shrinking by 3 % down to 6 % of the iterations), the same
oscillation rule (rho = 0.75), momentum 0.75, initial step 2 eps. Random starts are drawn
uniformly in the ball from a seeded CPU generator, for all the examples of a run at once,
so a run repeats exactly for a seed, whatever chunk size the machine's calibration chose.

>>> x_adv = apgd(model, x, y, threat=LinfBall(0.3), steps=100, loss="ce")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defpert.attacks._common import each_run, logits_in_chunks, project
from defpert.attacks.journal import Resume
from defpert.core.engine import frozen_parameters
from defpert.core.threat import ThreatModel
from defpert.errors import DefpertError
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import model_device

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
APGD_KEEP = ("first-broken", "last-broken", "highest")  # which point of a run is returned


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits ratio (B,), larger is worse for the true label.

    ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))`` with ``z_(k)`` the k-th largest logit.
    """
    ordered, order = logits.sort(dim=1)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    top_is_true = order[:, -1] == labels
    best_other = torch.where(top_is_true, ordered[:, -2], ordered[:, -1])
    return -(true - best_other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def dlr_targeted(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (B,): ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``."""
    ordered = logits.sort(dim=1)[0]
    true = logits.gather(1, labels[:, None]).squeeze(1)
    aim = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - aim) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


def _loss(
    name: str, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if name == "dlr":
        return dlr(logits, y)
    assert target is not None
    return dlr_targeted(logits, y, target)


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    steps: int = 100,
    loss: str = "ce",
    restarts: int = 1,
    targets: int = 9,
    eot: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    anchor: torch.Tensor | None = None,
    resume: Resume | None = None,
    keep: str = "first-broken",
) -> torch.Tensor:
    """APGD on ``loss``; returns a point of the ball per example (CPU).

    With ``keep="first-broken"`` (AutoAttack's choice, right for a model's robust
    accuracy): where an example is misclassified at some iteration, that point is returned;
    elsewhere the point of highest loss. With ``keep="highest"`` the point of highest loss
    is returned for every example, broken or not, and with ``keep="last-broken"`` the last
    misclassified iterate (torchattacks' choice): points deep in a wrong class, the
    candidates to pass through a test-time defense that pushes points back across a nearby
    boundary (one run only: ``restarts=1``, untargeted). ``restarts`` runs from fresh random starts only on examples
    not yet broken; with ``loss="dlr-targeted"`` the restarts run for each of ``targets``
    target classes (the 2nd, 3rd, ... most likely class of the clean input). ``eot``
    averages each gradient over that many forward passes, for a randomised model. With an
    ``anchor``, every iterate also stays within eps of it (see ``clip_to_both_balls``).
    ``resume`` takes a bookmark after each run (target class and restart) and continues an
    interrupted attack from its last one.
    """
    if loss not in APGD_LOSSES:
        raise DefpertError(f"unknown APGD loss {loss!r}; choose one of: {', '.join(APGD_LOSSES)}")
    if steps < 1 or restarts < 1 or eot < 1:
        raise DefpertError("APGD needs at least 1 step, 1 restart and 1 EOT sample")
    if keep not in APGD_KEEP:
        raise DefpertError(f"unknown APGD keep {keep!r}; choose one of: {', '.join(APGD_KEEP)}")
    deepest = keep != "first-broken"
    if deepest and (restarts != 1 or loss == "dlr-targeted"):
        raise DefpertError("APGD keeps the highest-loss point of one untargeted run only")
    device = model_device(model)
    size = batch_size or chunk_size(model, tuple(x.shape[1:]), device)
    x, y = x.detach().cpu(), y.detach().cpu()
    best = x.clone()
    if len(x) == 0:
        return best
    clean_logits = logits_in_chunks(model, x, size)
    unbroken = torch.ones_like(y, dtype=torch.bool) if deepest else clean_logits.argmax(1) == y
    ranks = range(2, targets + 2) if loss == "dlr-targeted" else [0]

    def attack(sel: torch.Tensor, target: torch.Tensor | None, start: torch.Tensor | None) -> None:
        assert start is not None  # every APGD run starts at random
        a = anchor[sel].to(device) if anchor is not None else None
        adv, broken, high = _single_run(
            model, x[sel].to(device), y[sel].to(device),
            target.to(device) if target is not None else None, threat, steps, loss,
            start.to(device), eot, a, last=keep == "last-broken",
        )  # fmt: skip
        kept = high if keep == "highest" else torch.where(broken.view(-1, 1, 1, 1), adv, high)
        best[sel] = kept.cpu()
        if not deepest:
            unbroken[sel[broken.cpu()]] = False

    runs = [(rank, True) for rank in ranks for _ in range(restarts)]
    each_run(runs, x, clean_logits, best, unbroken, threat, generator, size, resume, attack)
    return best


def _single_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    threat: ThreatModel,
    steps: int,
    loss: str,
    delta0: torch.Tensor,
    eot: int,
    anchor: torch.Tensor | None = None,
    rho: float = 0.75,
    last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from ``x + delta0``: (first misclassified points, or the last with
    ``last``; which broke; best-loss points)."""

    def gradient(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grad = torch.zeros_like(point)
        with torch.enable_grad(), frozen_parameters(model):
            for _ in range(eot):
                p = point.clone().requires_grad_(True)
                logits = model(p).float()
                values = _loss(loss, logits, y, target)
                grad += torch.autograd.grad(values.sum(), p)[0]
        return grad / eot, logits.detach(), values.detach()

    n = len(x)
    checkpoint = max(int(0.22 * steps), 1)
    shrink, floor = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    x_adv = project(threat, x, x + delta0, anchor)
    grad, logits, values = gradient(x_adv)
    broken = logits.argmax(1) != y
    x_broken = x_adv.clone()
    x_high, grad_high, value_high = x_adv.clone(), grad.clone(), values.clone()
    history = torch.zeros(steps, n, device=x.device)
    step = torch.full((n, 1, 1, 1), 2.0 * threat.eps, device=x.device)
    x_prev = x_adv.clone()
    since_check, value_at_check = 0, value_high.clone()
    reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
    for i in range(steps):
        with torch.no_grad():
            momentum = 0.75 if i > 0 else 1.0
            z = project(threat, x, x_adv + threat.step(grad, step), anchor)  # type: ignore[arg-type]
            moved = x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev)
            x_prev, x_adv = x_adv, project(threat, x, moved, anchor)
        grad, logits, values = gradient(x_adv)
        wrong = logits.argmax(1) != y
        newly = wrong if last else wrong & ~broken
        x_broken[newly] = x_adv[newly]
        broken |= wrong
        history[i] = values
        up = values > value_high
        x_high[up], grad_high[up], value_high[up] = x_adv[up], grad[up], values[up]
        since_check += 1
        if since_check == checkpoint:
            rises = sum((history[i - j] > history[i - j - 1]).float() for j in range(checkpoint))
            oscillating = rises <= checkpoint * rho
            stalled = ~reduced_at_check & (value_at_check >= value_high)
            reduce = oscillating | stalled
            reduced_at_check, value_at_check = reduce, value_high.clone()
            step[reduce] /= 2.0
            x_adv[reduce], grad[reduce] = x_high[reduce], grad_high[reduce]
            checkpoint, since_check = max(checkpoint - shrink, floor), 0
    return x_broken, broken, x_high
