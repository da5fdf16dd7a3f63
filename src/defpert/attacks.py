"""Named attacks built on the engine, and the strong worst-case evaluation.

* :func:`pgd` is Madry et al.'s projected gradient descent (L-inf or L2), the attack of
  the original study (``-p linf -k 20 -e 0.2 -a 0.01``).
* :func:`strong_attack` is the worst case per example over a suite (AutoAttack style):
  PGD with cross-entropy and with the CW margin, 100 steps, random restarts; APGD-CE,
  APGD-DLR and the black-box Square attack from the Adversarial Robustness Toolbox. Each
  attack runs only on the examples still classified correctly, and a point found by an
  earlier (e.g. the weak) attack is kept, so the strong accuracy never exceeds the weak.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from defpert import distributed
from defpert.devices import default_chunk_size, model_device
from defpert.engine import Schedule, frozen_parameters, madry_step_size, perturb
from defpert.evaluate import correct
from defpert.objectives import get_objective
from defpert.threat import ThreatModel


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    loss: str = "ce",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Untargeted PGD (Madry et al., 2018): ascend ``loss`` inside the threat model's ball.

    ``x`` is (N, C, H, W) in [0, 1], ``y`` (N,) the true labels; returns the adversarial
    inputs (N, C, H, W) in [0, 1] with ``threat.size(x_adv - x) <= eps``.

    >>> x_adv = pgd(model, x, y, threat=LinfBall(0.2), steps=20, step_size=0.01)
    """
    schedule = Schedule(steps, step_size, ascend=True, random_start=random_start)
    return perturb(
        model, x, y, threat=threat, objective=get_objective(loss), schedule=schedule,
        generator=generator, batch_size=batch_size, progress=progress, desc=f"pgd-{loss}",
        precision=precision,
    )  # fmt: skip


@dataclass
class StrongResult:
    """Worst case over the suite: the adversarial inputs, which examples survived, and how."""

    adversarial: torch.Tensor
    robust: torch.Tensor  # (N,) bool: still correct after every attack
    broken_by: dict[str, int] = field(default_factory=dict)  # attack name -> newly broken
    max_perturbation: float = 0.0

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")


@dataclass(frozen=True)
class StrongConfig:
    """The strong suite's settings (defaults follow AutoAttack's standard version)."""

    steps: int = 100
    restarts: int = 2
    use_art: bool = True
    square_queries: int = 200  # ART's Square loops in Python per example and query
    batch_size: int | None = None  # None: the engine's default chunk for the device


def strong_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    config: StrongConfig | None = None,
    seed: int = 0,
    known_adversarial: list[torch.Tensor] | None = None,
    progress: bool = False,
) -> StrongResult:
    """Worst case per example over PGD-CE, PGD-margin (with restarts), APGD-CE/DLR, Square.

    ``known_adversarial`` are candidates found earlier (e.g. by the weak attack); an example
    they already break counts as broken.
    """
    cfg = config or StrongConfig()
    x, y = x.detach().cpu(), y.detach().cpu()
    worst = x.clone()
    robust = correct(model, x, y)
    broken_by: dict[str, int] = {"clean": int((~robust).sum())}

    def absorb(name: str, candidate: torch.Tensor, idx: torch.Tensor) -> None:
        still = correct(model, candidate, y[idx])
        newly = idx[~still]
        worst[newly] = candidate[~still]
        robust[newly] = False
        broken_by[name] = broken_by.get(name, 0) + len(newly)

    for i, cand in enumerate(known_adversarial or []):
        idx = robust.nonzero().squeeze(1)
        absorb(f"given[{i}]" if i else "weak", cand[idx], idx)

    generator = torch.Generator().manual_seed(seed)
    step_size = madry_step_size(threat.eps, cfg.steps)
    for loss in ("ce", "margin"):
        for restart in range(cfg.restarts):
            idx = robust.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            cand = pgd(
                model, x[idx], y[idx], threat=threat, steps=cfg.steps, step_size=step_size,
                loss=loss, random_start=restart > 0,
                generator=generator, batch_size=cfg.batch_size, progress=progress,
            )  # fmt: skip
            absorb(f"pgd-{loss}-{cfg.steps}", cand, idx)
    if cfg.use_art:
        for name in ("apgd-ce", "apgd-dlr", "square"):
            idx = robust.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            cand = _art_attack(name, model, x[idx], y[idx], threat, cfg, seed)
            absorb(name, cand, idx)
    size = threat.size(worst - x)
    return StrongResult(worst, robust, broken_by, float(size.max()) if len(size) else 0.0)


# --------------------------------------------------------------------------- ART peers


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """ART draws from numpy's global RNG; seed it for the call, then restore the caller's state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _preserve_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.train(mode)


def art_classifier(model: nn.Module, x: torch.Tensor, num_classes: int) -> Any:
    """Wrap a [0, 1]-pixel model as ART's PyTorchClassifier on the model's device."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from art.estimators.classification import PyTorchClassifier

    device = model_device(model)
    return PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes, clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )  # fmt: skip


def _art_norm(threat: ThreatModel) -> float:
    return np.inf if threat.norm == "linf" else 2.0


def _art_attack(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    cfg: StrongConfig,
    seed: int,
) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    device = model_device(model)
    num_classes = int(model(x[:1].to(device)).shape[1])
    batch_size = cfg.batch_size or default_chunk_size(device)
    with (
        _preserve_mode(model),
        frozen_parameters(model),
        _numpy_seed(seed),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        classifier = art_classifier(model, x, num_classes)
        if name == "square":
            attack = SquareAttack(
                classifier, norm=_art_norm(threat), eps=threat.eps, max_iter=cfg.square_queries,
                nb_restarts=1, batch_size=batch_size, verbose=False,
            )  # fmt: skip
        else:
            attack = AutoProjectedGradientDescent(
                classifier, norm=_art_norm(threat), eps=threat.eps, eps_step=2 * threat.eps,
                max_iter=cfg.steps, targeted=False, nb_random_init=1, batch_size=batch_size,
                loss_type="cross_entropy" if name == "apgd-ce" else "difference_logits_ratio",
                verbose=False,
            )  # fmt: skip
        # Under torchrun rank 0 runs ART (it draws from its own RNG) and shares the result.
        adv = attack.generate(x=x.numpy(), y=y.numpy()) if distributed.is_main() else x.numpy()
    adv_t = distributed.from_main(torch.from_numpy(np.asarray(adv, dtype=np.float32))).clamp(0, 1)
    # ART works in float32 with its own projection; re-project so no candidate leaves the ball.
    delta = threat.project(adv_t - x)
    return (x + delta).clamp(0, 1)
