"""Figures people would rather look at than read: image grids and accuracy curves.

Both return a matplotlib ``Figure`` and never call ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from defpert.results import BudgetRow, Measured, SweepRow
from defpert.runtime.devices import model_device


@torch.no_grad()
def image_grid(
    versions: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    model: nn.Module,
    *,
    n: int = 6,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """One row per example, one column per version, plus each version's perturbation.

    Under each image: the model's prediction and confidence (green when correct). The
    perturbation columns show ``version - first version`` on a diverging scale (blue:
    darker, red: brighter) whose colour bar under the column gives the pixel change; the
    scale is symmetric around 0 and spans the column's largest change.
    """
    names = list(versions)
    base = versions[names[0]][:n]
    n = len(base)
    device = model_device(model)
    deltas = {f"Δ {name.split(' ')[0]}": versions[name][:n] - base for name in names[1:]}
    cols = len(names) + len(deltas)
    fig = Figure(figsize=(1.55 * cols, 1.75 * n + 1.0), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for j, name in enumerate(names):
        probs = torch.softmax(model(versions[name][:n].to(device)), dim=1).cpu()
        conf, pred = probs.max(dim=1)
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(_hw(versions[name][i]), cmap="gray", vmin=0, vmax=1)
            p = int(pred[i])
            shown = class_names[p] if class_names else str(p)
            ok = p == int(labels[i])
            ax.set_xlabel(
                f"{shown} ({float(conf[i]):.0%})", fontsize=10, color="green" if ok else "red"
            )
            if i == 0:
                ax.set_title(name, fontsize=10)
    for j, (name, d) in enumerate(deltas.items(), start=len(names)):
        largest = max(float(d.abs().max()), 1e-6)
        for i in range(n):
            ax = axes[i, j]
            shown_delta = ax.imshow(_hw(d[i]), cmap="coolwarm", vmin=-largest, vmax=largest)
            if i == 0:
                ax.set_title(name, fontsize=10)
        bar = fig.colorbar(shown_delta, ax=axes[:, j], location="bottom", shrink=0.9, aspect=12)
        bar.ax.tick_params(labelsize=8)
        bar.set_label("pixel change", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _hw(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().float().numpy().reshape(image.shape[-2], image.shape[-1])


def accuracy_curves(rows: Sequence[SweepRow | Mapping[str, Any]], *, title: str = "") -> Figure:
    """Accuracy versus eps for original and defensive data, weak (solid) and strong (dashed).

    ``rows`` are :func:`defpert.study.sweep.run_sweep` results (:class:`SweepRow`). Where
    the strong attack ran, the weak curve is drawn on the strong attack's examples too, so
    the two curves compare the same examples.
    """
    typed = [r if isinstance(r, SweepRow) else SweepRow.from_json(r) for r in rows]
    eps = [r.eps for r in typed]
    fig = Figure(figsize=(5.6, 3.8), layout="constrained")
    ax = fig.subplots()
    curves: dict[str, tuple[Callable[[SweepRow], Measured | None], str, str]] = {
        "original, weak attack": (lambda r: r.bare.weak_on_strong_examples or r.bare.weak, "C0", "-"),
        "original, strong attack": (lambda r: r.bare.strong, "C0", "--"),
        "defensive, weak attack": (lambda r: r.defended.weak_on_strong_examples or r.defended.weak, "C2", "-"),
        "defensive, strong attack": (lambda r: r.defended.strong, "C2", "--"),
    }  # fmt: skip
    for label, (number, colour, style) in curves.items():
        values = [number(r) for r in typed]
        if all(v is not None for v in values):
            ax.plot(eps, [v.accuracy for v in values if v is not None], style, color=colour,
                    marker="o", label=label)  # fmt: skip
    ax.set_xlabel("eps")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    if title:
        ax.set_title(title, fontsize=11)
    return fig


def budget_curves(rows: Sequence[BudgetRow | Mapping[str, Any]], *, title: str = "") -> Figure:
    """Accuracy versus the defender's budget at the attacker's fixed eps, one colour per
    defense: the strong attack (solid) and the weak attack on the same examples (dashed).

    ``rows`` are :func:`defpert.study.sweep.run_budget_sweep` results (:class:`BudgetRow`).
    """
    typed = [r if isinstance(r, BudgetRow) else BudgetRow.from_json(r) for r in rows]
    fig = Figure(figsize=(5.6, 3.8), layout="constrained")
    ax = fig.subplots()
    defenses = list(dict.fromkeys(r.defense for r in typed))
    for i, defense in enumerate(defenses):
        mine = sorted((r for r in typed if r.defense == defense), key=lambda r: r.eps_def)
        budgets = [r.eps_def for r in mine]
        strong = [r.numbers.strong for r in mine]
        if all(s is not None for s in strong):
            ax.plot(budgets, [s.accuracy for s in strong if s is not None], "-", color=f"C{i}",
                    marker="o", label=f"{defense}, strong attack")  # fmt: skip
        # the weak attack on the strong attack's examples where it ran, else on all
        weak = [r.numbers.weak_on_strong_examples or r.numbers.weak for r in mine]
        if all(w is not None for w in weak):
            ax.plot(budgets, [w.accuracy for w in weak if w is not None], "--", color=f"C{i}",
                    marker=".", alpha=0.7, label=f"{defense}, weak attack")  # fmt: skip
    if typed:
        ax.axvline(typed[0].eps, color="grey", lw=0.8, ls=":")
        ax.annotate("attacker's eps", (typed[0].eps, 0.02), fontsize=9, color="grey",
                    rotation=90, ha="right", va="bottom")  # fmt: skip
    ax.set_xlabel("defender's budget eps_def")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    if title:
        ax.set_title(title, fontsize=11)
    return fig
