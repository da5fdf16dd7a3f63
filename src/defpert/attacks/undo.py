"""Moon et al.'s white-box check of a robustified point: undo the defense, then attack.

An attacker who knows that an image was robustified (but not the natural image) first
runs the robustification in reverse, ascending the worst-case loss within the defender's
budget, to find a point like the one before the defense; then attacks from there. The
attack stays inside the stated threat model: the undone point is only its start, and every
iterate lies within eps of the defended point (and of the natural image, with ``anchor``).
Its points join the strong suite as known candidates, so the reported strong accuracy is
the worst case over both.
"""

from __future__ import annotations

import torch
from torch import nn

from defpert.core.engine import Schedule, madry_step_size, perturb
from defpert.core.objectives import cross_entropy, margin
from defpert.core.threat import ThreatModel
from defpert.defenses.methods import Defense


def undo_then_attack(
    model: nn.Module,
    x_def: torch.Tensor,
    y: torch.Tensor,
    defense: Defense,
    *,
    threat: ThreatModel,
    steps: int = 100,
    batch_size: int | None = None,
    anchor: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Adversarial points for defended inputs ``x_def``: the defense reversed (same budget,
    same inner attack, ascending), then PGD with the CW margin from there."""
    undo = Schedule(defense.steps, defense.step_size, ascend=True, optimizer=defense.optimizer)
    undone = perturb(model, x_def, y, threat=defense.threat, objective=cross_entropy,
                     schedule=undo, inner=defense.inner_attack(), batch_size=batch_size,
                     progress=progress, desc="undo")  # fmt: skip
    attack = Schedule(steps, madry_step_size(threat.eps, steps), ascend=True)
    return perturb(model, x_def, y, threat=threat, objective=margin, schedule=attack,
                   batch_size=batch_size, anchor=anchor, start=undone - x_def,
                   progress=progress, desc="undo-then-attack")  # fmt: skip
