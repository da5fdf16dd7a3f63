"""The projected-gradient optimiser shared by every attack and every defense.

    attack:   x_adv = argmax_{||d|| <= eps} objective(model(x + d), y)   (ascend=True)
    defense:  x_def = argmin_{||d|| <= eps} objective(model(x + d), y)   (ascend=False)

Each step: gradient of the *summed* per-example objective with respect to the
perturbation, a steepest step in the threat model's norm, projection onto the ball, then
onto the [0, 1] box. The model's parameters, gradients and train/eval mode are left
exactly as they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from defpert.core.objectives import Objective, summed
from defpert.core.passes import add_elsewhere, counted_so_far
from defpert.core.threat import ThreatModel, clip_to_both_balls, clip_to_box, validate_schedule
from defpert.errors import DefpertError
from defpert.runtime import distributed, threads
from defpert.runtime.calibrate import chunk_size
from defpert.runtime.devices import autocast, frozen_parameters, model_device
from defpert.runtime.progress import ticking

# Maps (model, point, labels, previous) to the points where the objective is evaluated,
# shape (K, B, C, H, W): the robustifying defense evaluates the loss at K inner attacks'
# points (Danskin's theorem: the gradient there is the gradient of the max) and averages.
# ``previous`` holds the last step's inner offsets from the point (None at the first step),
# so an inner attack may start where it ended (warm start).
InnerPoint = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class RowsProgress(Protocol):
    """Where a long perturbation keeps the rows it has finished, so that a rerun on the same
    inputs continues after them (:class:`defpert.study.store.RowsJournal` keeps them in a file)."""

    interval: float  # seconds between writes

    def read(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, torch.Tensor] | None:
        """``(batch_size, rows_done, rows)`` left by a run on these inputs, or None."""
        ...

    def write(
        self, x: torch.Tensor, labels: torch.Tensor, batch_size: int, rows: torch.Tensor
    ) -> None:
        """Keep ``rows``, the results of the first ``len(rows)`` inputs."""
        ...


# How a step is taken from the gradient: the threat model's steepest step (sign for L-inf,
# the normalised gradient for L2), or Adam's or RMSprop's per-pixel scaled step.
OPTIMIZERS = ("steepest", "adam", "rmsprop")


def madry_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step rule, 2.5 eps / steps: enough to cross the ball from any start."""
    return 2.5 * eps / steps


@dataclass(frozen=True)
class Schedule:
    """How to optimise: number of steps, step length, direction, random start."""

    steps: int
    step_size: float
    ascend: bool = True
    random_start: bool = False
    optimizer: str = "steepest"  # OPTIMIZERS
    # Gradient components below this fraction of the example's largest count as zero: at
    # 1e-6 they are float rounding, whose sign changes with the summation order (the chunk
    # size), and an L-inf step would move such a pixel by the full step either way.
    noise_floor: float = 0.0

    def __post_init__(self) -> None:
        validate_schedule(self.steps, self.step_size)
        if self.optimizer not in OPTIMIZERS:
            raise DefpertError(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    threat: ThreatModel,
    objective: Objective,
    schedule: Schedule,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    inner: InnerPoint | None = None,
    progress: bool = False,
    desc: str = "pgd",
    precision: str = "fp32",
    anchor: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    saved: RowsProgress | None = None,
) -> torch.Tensor:
    """Run projected gradient ascent or descent; return the perturbed inputs (CPU, detached).

    ``x`` (B, C, H, W) in [0, 1] and ``labels`` (B,) may live anywhere; the work happens on
    the model's device in chunks of ``batch_size`` (default: a size that keeps a chunk's
    activations in cache on the CPU, a large one on a GPU; any ``B`` is accepted). A random
    start is drawn for all of ``x`` at once from ``generator``, so the result does not
    depend on ``batch_size``. ``precision="bf16"`` computes the model's forward and
    backward passes under bfloat16 autocast (the perturbation itself stays float32).
    ``anchor`` (B, C, H, W), when given, is a second centre: every iterate also stays
    within eps of it (the attack's budget measured from the natural image as well as from
    the defended point ``x``). ``start`` (B, C, H, W), when given, is the first iterate's
    offset from ``x`` (projected like any other), in place of zero or a random start.
    ``saved``, when given, keeps the finished rows as the chunks complete (at most once per
    its ``interval``); a rerun on the same inputs takes them back and continues, in chunks
    of the size the first run used, so it ends with the points the first run would have
    (one process only: under torchrun nothing is kept).
    """
    device = model_device(model)
    if batch_size is not None and batch_size < 1:
        raise DefpertError(f"batch size must be at least 1, got {batch_size}")
    x = x.detach().cpu()
    labels = labels.detach().cpu()
    check_inputs(model, x, labels)
    if batch_size is None:
        batch_size = chunk_size(model, tuple(x.shape[1:]), device)
    if start is None and schedule.random_start:
        start = threat.random_init(x.shape, generator)
    out = torch.empty_like(x)
    ranks = distributed.world_size()  # under torchrun each rank computes its own chunks
    if ranks > 1:
        saved = None
    done = 0
    earlier = saved.read(x, labels) if saved is not None else None
    if earlier is not None:
        batch_size, done, rows = earlier
        out[:done] = rows
    bounds = [(lo, min(lo + batch_size, len(x))) for lo in range(0, len(x), batch_size)]
    last_write = time.monotonic()
    counted_before = counted_so_far()
    with tqdm(total=len(x) * schedule.steps, desc=desc, unit="img-step", unit_scale=True,
              disable=not (progress and distributed.is_main()), leave=False) as bar, \
            ticking(bar):  # fmt: skip
        bar.update(done * schedule.steps)
        for i in distributed.my_chunks(len(bounds)):
            lo, hi = bounds[i]
            if hi <= done:
                continue
            threads.adapt()
            delta0 = start[lo:hi].to(device) if start is not None else None
            # An inner attack with random starts draws them for this chunk from a generator
            # seeded by the chunk's position, so every rank under torchrun draws the same.
            for_chunk = getattr(inner, "for_chunk", None)
            chunk_inner = for_chunk(lo) if for_chunk is not None else inner
            out[lo:hi] = perturb_batch(
                model, x[lo:hi].to(device), labels[lo:hi].to(device),
                threat=threat, objective=objective, schedule=schedule,
                delta0=delta0, inner=chunk_inner, precision=precision,
                anchor=anchor[lo:hi].to(device) if anchor is not None else None,
            ).cpu()  # fmt: skip
            bar.update(min((hi - lo) * schedule.steps * ranks, bar.total - bar.n))
            if (
                saved is not None
                and hi < len(x)
                and time.monotonic() - last_write >= saved.interval
            ):
                saved.write(x, labels, batch_size, out[:hi])
                last_write = time.monotonic()
    if ranks > 1 and counted_before is not None:
        _count_the_other_ranks(counted_before)
    return distributed.share_rows(out, bounds)


def _count_the_other_ranks(before: dict[str, int]) -> None:
    """Add the passes the other ranks made on their chunks to this rank's running counters:
    every rank then reports the cost of the whole computation, as one process would."""
    now = counted_so_far() or before
    mine = (now["forward"] - before["forward"], now["backward"] - before["backward"])
    forward, backward = distributed.sum_over_ranks(*mine)
    add_elsewhere(int(forward) - mine[0], int(backward) - mine[1])


def perturb_batch(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    threat: ThreatModel,
    objective: Objective,
    schedule: Schedule,
    delta0: torch.Tensor | None = None,
    inner: InnerPoint | None = None,
    create_graph: bool = False,
    precision: str = "fp32",
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """One batch, on whatever device ``x`` is on; returns ``x + delta``.

    With ``create_graph`` the result stays differentiable with respect to ``x`` (the
    unrolled defense that an adaptive attack differentiates through); each step is then
    the threat model's straight-through step, so an L-inf sign step passes a gradient.
    """
    with torch.enable_grad(), frozen_parameters(model):
        return _run_steps(
            model,
            x,
            labels,
            threat,
            objective,
            schedule,
            delta0,
            inner,
            create_graph,
            precision,
            anchor,
        )


def check_inputs(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse, in one line, inputs the optimiser would silently turn into nonsense.

    Images must be (N, C, H, W) floats in [0, 1], finite, of the shape the model takes;
    labels (N,) integers naming one of the model's classes.
    """
    if labels.shape != (len(x),) or labels.is_floating_point() or labels.is_complex():
        raise DefpertError(
            f"labels must be integers of shape ({len(x)},), got {labels.dtype} {tuple(labels.shape)}"
        )
    classes = check_images(model, x)
    if len(x) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DefpertError(
            f"labels must lie in [0, {classes - 1}] for this {classes}-class model, "
            f"found [{int(labels.min())}, {int(labels.max())}]"
        )


def check_images(model: nn.Module, x: torch.Tensor) -> int:
    """Refuse images a [0, 1]-pixel model cannot take; return the model's number of classes."""
    if x.dim() != 4 or not x.is_floating_point():
        raise DefpertError(
            f"images must be a float tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )
    if len(x) == 0:
        return 0
    if not torch.isfinite(x).all():
        raise DefpertError(f"images hold {int((~torch.isfinite(x)).sum())} NaN or infinite pixels")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise DefpertError(
            f"pixels must lie in [0, 1], found [{low:.4g}, {high:.4g}] (scale images by 1/255?)"
        )
    try:
        with torch.no_grad():
            return int(model(x[:1].to(model_device(model))).shape[-1])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DefpertError(
            f"images of shape {tuple(x.shape[1:])} do not fit the model: {first}"
        ) from None


def _run_steps(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    objective: Objective,
    schedule: Schedule,
    delta0: torch.Tensor | None,
    inner: InnerPoint | None,
    create_graph: bool,
    precision: str,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    sign = 1.0 if schedule.ascend else -1.0

    def feasible(delta: torch.Tensor) -> torch.Tensor:
        delta = clip_to_box(x, threat.project(delta))
        return delta if anchor is None else clip_to_both_balls(x, delta, anchor, threat)

    delta = feasible(torch.zeros_like(x) if delta0 is None else delta0)
    take_step = _stepper(threat, schedule, create_graph)
    total = summed(objective)
    offsets: torch.Tensor | None = None  # the inner attacks' last offsets from the point
    for _ in range(schedule.steps):
        if not create_graph:
            delta = delta.detach().requires_grad_(True)
        elif not delta.requires_grad:
            delta = delta.requires_grad_(True)
        point = x + delta
        inner_points = 1
        if inner is None:
            points, point_labels = point, labels
        else:  # the gradient at each inner point flows to the outer point (Danskin)
            found = inner(model, point.detach(), labels, offsets)
            offsets = (found - point.detach()).detach()
            points = (point + offsets).flatten(0, 1)
            point_labels = labels.repeat(len(found))
            inner_points = len(found)
        with autocast(x.device, precision):
            logits = model(points)
        if logits.dtype != torch.float32:
            logits = logits.float()
        # summed over examples, averaged over each example's inner points; no operation is
        # spent on a factor of 1 (on a GPU each one is a kernel launch of a launch-bound step)
        loss = total(logits, point_labels)
        if inner_points != 1:
            loss = loss / inner_points
        (grad,) = torch.autograd.grad(loss, delta, create_graph=create_graph)
        delta = feasible(delta + take_step(grad if sign == 1 else sign * grad))
    return (x + delta) if create_graph else (x + delta).detach()


def _stepper(
    threat: ThreatModel, schedule: Schedule, create_graph: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The step a gradient turns into, per the schedule's optimizer.

    Adam (betas 0.9, 0.999, bias-corrected) and RMSprop (alpha 0.99, as torch's) scale each
    pixel by its own gradient history (:meth:`ThreatModel.scaled_step`); the step is then
    projected like any other.
    """
    if schedule.optimizer == "steepest":
        step = threat.straight_through_step if create_graph else threat.step
        if schedule.noise_floor > 0:
            floor = schedule.noise_floor
            return lambda grad: step(_without_noise(grad, floor), schedule.step_size)
        return lambda grad: step(grad, schedule.step_size)
    return _ScaledStep(threat, schedule)


def _without_noise(grad: torch.Tensor, floor: float) -> torch.Tensor:
    """``grad`` with each component below ``floor`` times its example's largest set to 0."""
    largest = grad.detach().flatten(1).abs().amax(1).view(-1, *([1] * (grad.dim() - 1)))
    return torch.where(grad.detach().abs() > floor * largest, grad, torch.zeros_like(grad))


class _ScaledStep:
    """Adam's or RMSprop's step: each pixel scaled by its own gradient history."""

    def __init__(self, threat: ThreatModel, schedule: Schedule) -> None:
        self.threat, self.schedule = threat, schedule
        self.t = 0
        self.m: torch.Tensor | float = 0.0  # first moment (Adam)
        self.v: torch.Tensor | float = 0.0  # second moment

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.detach()
        self.t += 1
        if self.schedule.optimizer == "rmsprop":
            self.v = 0.99 * self.v + 0.01 * grad * grad
            direction = grad / (torch.as_tensor(self.v).sqrt() + 1e-8)
        else:
            self.m = 0.9 * self.m + 0.1 * grad
            self.v = 0.999 * self.v + 0.001 * grad * grad
            m_hat = torch.as_tensor(self.m) / (1 - 0.9**self.t)
            v_hat = torch.as_tensor(self.v) / (1 - 0.999**self.t)
            direction = m_hat / (v_hat.sqrt() + 1e-8)
        return self.threat.scaled_step(direction, self.schedule.step_size)
