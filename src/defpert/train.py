"""Standard training of a classifier, from a notebook or from ``defpert train``.

    defpert train --dataset mnist --model cnn --epochs 3 --seed 0 --out runs/cnn

The validation split (the end of the official training set) is kept apart and used only
to report accuracy after each epoch; the test split is evaluated once, at the end.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from defpert.core.engine import Schedule, perturb_batch
from defpert.core.evaluate import accuracy
from defpert.core.objectives import cross_entropy
from defpert.core.threat import ThreatModel, make_threat
from defpert.data.datasets import Split, get_spec, load_split
from defpert.errors import DefpertError
from defpert.models import shipped
from defpert.models.checkpoint import environment, read_card, save_checkpoint
from defpert.models.zoo import build_model
from defpert.runtime import distributed, threads
from defpert.runtime.devices import autocast, pick_device
from defpert.runtime.rundir import (
    claim_run,
    default_cache_dir,
    ensure_dir,
    write_atomic,
    write_json,
)
from defpert.wording import count


@dataclass
class TrainConfig:
    """Everything that determines a trained model."""

    dataset: str = "mnist"
    model: str = "cnn"
    epochs: int = 3
    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    limit: int | None = None  # train on the first N training images only
    adversarial: str = (
        "none"  # ADVERSARIAL: pgd (Madry), trades (Zhang), fgsm-rs (Wong), preempt (Moon)
    )
    adv_norm: str = "linf"
    adv_eps: float | None = None  # default: ADV_EPS for the dataset
    adv_steps: int = 40  # pgd only
    adv_step_size: float = 0.01  # pgd only; fgsm-rs steps 1.25 eps
    adv_warmup: float = 0.0  # epochs over which the training radius grows from 0 to adv_eps
    lr_schedule: str = "cosine"  # "cosine" decay, or "cyclic": up to lr at half-way, then down
    trades_beta: float = 6.0  # trades only: weight of the KL term (Zhang et al.: 1/lambda = 6)
    defense_eps: float | None = None  # preempt only: the defender's budget (default: adv_eps)
    precision: str = "fp32"  # bf16: each batch's passes under bfloat16 autocast, weights fp32

    def settings(self) -> dict[str, Any]:
        """The settings that determine this model; those of another kind of training are
        left out, so they never make two equal runs look different."""
        kept = vars(self).copy()
        if self.adversarial != "trades":
            kept.pop("trades_beta")
        if self.adversarial != "preempt":
            kept.pop("defense_eps")
        if self.precision == "fp32":
            kept.pop("precision")  # as every model trained before the option existed
        return kept

    def defender(self) -> ThreatModel | None:
        """The defender's ball of robust-to-robustification training (None for the others):
        each batch's attack starts from a one-step defensive point inside it."""
        if self.adversarial != "preempt":
            return None
        adversary = self.adversary()
        assert adversary is not None
        eps = self.defense_eps if self.defense_eps is not None else adversary[0].eps
        norm = adversary[0].norm
        if not eps > 0 or (norm == "linf" and eps > 1):
            top = "1 for linf" if norm == "linf" else "any positive value for l2"
            raise DefpertError(f"--defense-eps must be above 0 (at most {top}), got {eps:g}")
        return make_threat(norm, eps)

    def adversary(self) -> tuple[ThreatModel, Schedule] | None:
        """The attack each training batch is replaced by (None for standard training)."""
        if self.adversarial == "none":
            return None
        if self.adversarial not in ADVERSARIAL:
            raise DefpertError(
                f"unknown adversarial training {self.adversarial!r}; choose one of: "
                f"none, {', '.join(ADVERSARIAL)}"
            )
        eps = self.adv_eps if self.adv_eps is not None else ADV_EPS.get(self.dataset, 0.3)
        threat = make_threat(self.adv_norm, eps)
        if self.adversarial == "fgsm-rs":  # one signed step of 1.25 eps from a random start
            return threat, Schedule(1, 1.25 * threat.eps, random_start=True)
        # TRADES starts next to the clean input (0.001 * Gaussian noise), PGD anywhere in the ball
        random_start = self.adversarial in ("pgd", "preempt")
        return threat, Schedule(self.adv_steps, self.adv_step_size, random_start=random_start)

    def validate(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise DefpertError(f"--seed must lie in [0, 2^63), got {self.seed}")
        self.adversary()
        self.defender()
        if self.epochs < 1:
            raise DefpertError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise DefpertError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise DefpertError(f"--lr must be positive, got {self.lr}")
        if self.batch_size < distributed.world_size():
            raise DefpertError(
                f"--batch-size {self.batch_size} is smaller than the number of processes"
            )
        if self.limit is not None and self.limit < 1:
            raise DefpertError(f"--limit must be at least 1, got {self.limit}")
        if self.precision not in TRAIN_PRECISIONS:
            raise DefpertError(f"unknown --precision {self.precision!r}; choose one of: "
                               f"{', '.join(TRAIN_PRECISIONS)}")  # fmt: skip
        if self.lr_schedule not in LR_SCHEDULES:
            raise DefpertError(
                f"unknown --lr-schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}"
            )
        if self.adversarial == "trades" and not self.trades_beta >= 0:
            raise DefpertError(f"--trades-beta must be 0 or more, got {self.trades_beta}")
        if self.adversarial != "none" and self.adv_steps < 1:
            raise DefpertError(f"--adv-steps must be at least 1, got {self.adv_steps}")
        if not self.adv_warmup >= 0:
            raise DefpertError(f"--adv-warmup must be 0 or more epochs, got {self.adv_warmup}")


@dataclass
class TrainResult:
    """The trained model (in eval mode) and what was measured."""

    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)


def train(
    config: TrainConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train a model, evaluate it on the test split, and (if ``out``) save a checkpoint.

    The global random state is left untouched: the seed drives a private RNG scope.
    With ``out``, the training state is saved after every epoch, and an interrupted run
    of the same config continues from its last finished epoch with the same result. A
    directory holding a model of another config is refused unless ``overwrite``.
    """
    config.validate()
    if out is None:
        return _train(config, None, data_dir, device, progress)
    with claim_run(out, {"command": "train", **config.settings()}, overwrite=overwrite,
                   remove_on_overwrite=TRAIN_OUTPUTS) as run:  # fmt: skip
        if overwrite and distributed.is_main():
            _discard_unreadable_state(run / STATE_FILE)
        return _train(config, run, data_dir, device, progress)


def _discard_unreadable_state(path: Path) -> None:
    """``--overwrite`` clears a training state that cannot be read (a readable one of the
    same config is still continued: ``reproduce`` resumes its training that way)."""
    if not path.is_file():
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # whatever a damaged file raises: it is discarded, not trusted
        path.unlink(missing_ok=True)


# What a training run writes (removed by --overwrite before a run of another config).
STATE_FILE = "train-state.pt"
# Seconds between the bookmarks a single-process run leaves inside an epoch: an epoch of
# PGD-40 training takes about an hour on a laptop CPU, too much to lose to an interruption.
BOOKMARK_SECONDS = 60.0
TRAIN_OUTPUTS = ("model.safetensors", "model.json", "metrics.json", STATE_FILE)


def _train(
    config: TrainConfig,
    run: Path | None,
    data_dir: str | os.PathLike[str] | None,
    device: str | torch.device | None,
    progress: bool,
) -> TrainResult:
    dev = device if isinstance(device, torch.device) else pick_device(device)
    train_split = load_split(config.dataset, "train", data_dir, progress=progress).head(
        config.limit
    )
    val_split = load_split(config.dataset, "val", data_dir, progress=progress)
    test_split = load_split(config.dataset, "test", data_dir, progress=progress)
    spec = train_split.spec
    mean, std = float(train_split.images.mean()), float(train_split.images.std())

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_model(config.model, spec.input_shape, spec.num_classes, mean=mean, std=std)
        model.to(dev)
        if distributed.active():  # same initial weights everywhere, own dropout masks per rank
            torch.manual_seed(config.seed + 1000 * distributed.rank())
        state = run / STATE_FILE if run is not None else None
        history, seconds, resumed = _fit(
            model, train_split, val_split, config, dev, progress, state
        )
    model.eval()
    test_acc = accuracy(model, test_split.images, test_split.labels)
    metrics: dict[str, Any] = {
        "test_accuracy": test_acc,
        "val_accuracy": history[-1]["val_accuracy"],
        "epochs": history,
        "train_seconds": seconds,
        "resumed_after_epoch": resumed.epochs,
        "resumed_at_batch": resumed.batches,
        "train_images_per_second": len(train_split) * config.epochs / seconds,
        "n_train": len(train_split),
        "n_val": len(val_split),
        "n_test": len(test_split),
        "device": str(dev),
    }
    card = _card(config, spec, mean, std, test_acc, metrics["val_accuracy"], dev)
    if run is not None:
        save_checkpoint(model, run, card)
        write_json(Path(run) / "metrics.json", metrics)
        if distributed.is_main():
            (run / STATE_FILE).unlink(missing_ok=True)  # the checkpoint now holds the result
    return TrainResult(model=model, metrics=metrics, card=card)


def _card(config: TrainConfig, spec: Any, mean: float, std: float, test_acc: float,
          val_acc: float, dev: torch.device) -> dict[str, Any]:  # fmt: skip
    """The model card saved beside the weights: what was trained, how, and how well."""
    adversary = config.adversary()
    return {
        "dataset": config.dataset,
        "architecture": config.model,
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "classes": list(spec.classes),
        "normalization": {"mean": mean, "std": std},
        "seed": config.seed,
        "epochs": config.epochs,
        "training": {
            "kind": "standard" if adversary is None else f"adversarial-{config.adversarial}",
            **config.settings(),
        },
        "threat_trained_against": None
        if adversary is None
        else {
            "norm": adversary[0].norm,
            "eps": adversary[0].eps,
            "steps": adversary[1].steps,
            "step_size": adversary[1].step_size,
            "random_start": adversary[1].random_start,
            **({"trades_beta": config.trades_beta} if config.adversarial == "trades" else {}),
            **(
                {
                    "defense_eps": defender.eps,
                    "defense_point": "one signed step of 1.25 "
                    "defense_eps from a random start, descending cross-entropy; the attack's "
                    "budget measured from it",
                }
                if (defender := config.defender()) is not None
                else {}
            ),
        },
        "accuracy": {"test": test_acc, "val": val_acc},
        "environment": environment(dev),
    }


@dataclass(frozen=True)
class Resumed:
    """Where a run continued from its saved state: after ``epochs`` whole epochs and
    ``batches`` batches of the next (both 0: started from scratch)."""

    epochs: int = 0
    batches: int = 0


@dataclass
class _Partial:
    """An epoch's progress at a bookmark: the next batch and the running sums."""

    epoch: int
    next_step: int = 0
    seen: int = 0
    right: int = 0
    loss_sum: float = 0.0
    elapsed: float = 0.0  # seconds of this epoch before the bookmark


@dataclass
class _Batches:
    """One epoch's batches: the optimiser's steps on each batch's loss (adversarial or
    preemptive where the recipe says so), the running sums, the progress bar, bookmarks."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper under torchrun
    train_split: Split
    config: TrainConfig
    device: torch.device
    optimizer: torch.optim.Optimizer
    schedule: Any
    steps_per_epoch: int
    progress: bool
    adversary: Any  # the recipe's attack on each batch (None: plain training)
    defender: Any  # the recipe's defensive point first (preempt), or None

    def epoch(self, epoch: int, order: torch.Tensor, at: _Partial, start: float,
              bookmark: Callable[[], None] | None) -> None:  # fmt: skip
        """Train on ``order``'s batches from ``at.next_step``, adding to ``at``'s sums;
        ``bookmark()`` (None: never) saves them at most every ``BOOKMARK_SECONDS``."""
        config, steps = self.config, self.steps_per_epoch
        rank, ranks = distributed.rank(), distributed.world_size()
        adversary, defender = self.adversary, self.defender
        warmup = config.adv_warmup * steps  # batches over which the radius grows
        last_bookmark = time.perf_counter()
        bar = tqdm(
            range(at.next_step, steps), desc=f"epoch {epoch}/{config.epochs}",
            unit="batch", total=steps, initial=at.next_step,
            disable=not self.progress, leave=True,
        )  # fmt: skip
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size][rank::ranks]
            x = self.train_split.images[idx].to(self.device, non_blocking=True)
            y = self.train_split.labels[idx].to(self.device, non_blocking=True)
            done = (epoch - 1) * steps + step  # batches before this one
            now = None if adversary is None else _warmed_up(adversary, done, warmup)
            with autocast(self.device, config.precision):
                logits, loss = _batch_loss(
                    self.model, self.net, x, y, config, now, defender, done, warmup
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            at.seen += len(y)
            at.right += int((logits.argmax(1) == y).sum())
            at.loss_sum += float(loss.detach()) * len(y)
            if step % 20 == 0 or step == steps - 1:
                rate = at.seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(
                    loss=f"{at.loss_sum / at.seen:.4f}",
                    acc=f"{at.right / at.seen:.4f}",
                    img_s=f"{rate:.0f}",
                )
            if (bookmark is not None and step < steps - 1
                    and time.perf_counter() - last_bookmark >= BOOKMARK_SECONDS):  # fmt: skip
                at.next_step, at.elapsed = step + 1, time.perf_counter() - start
                bookmark()
                last_bookmark = time.perf_counter()


def _fit(
    model: nn.Module,
    train_split: Split,
    val_split: Split,
    config: TrainConfig,
    device: torch.device,
    progress: bool,
    state_path: Path | None = None,
) -> tuple[list[dict[str, float]], float, Resumed]:
    """Adam with a cosine (or cyclic) learning-rate schedule.

    Returns the per-epoch history, the seconds spent training, and where a saved state let
    it resume. The state is saved after each epoch and, in a single-process run, every
    ``BOOKMARK_SECONDS`` inside one; a resumed run ends with the uninterrupted one's weights.
    """
    n = len(train_split)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    ranks = distributed.world_size()
    # Under torchrun: DistributedDataParallel, each rank takes every ranks-th example of
    # each global batch (the same order everywhere), gradients are averaged across ranks.
    net = nn.parallel.DistributedDataParallel(model) if ranks > 1 else model
    # torchrun runs keep the per-epoch state only: inside an epoch each rank holds its own
    # running sums and dropout RNG, and one state file keeps one rank's view (when to save
    # could be rank 0's call, as in attacks.journal; what to save could not).
    bookmarks = state_path is not None and ranks == 1
    progress = progress and distributed.is_main()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = _lr_schedule(optimizer, config.lr_schedule, steps_per_epoch * config.epochs)
    shuffle = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    seconds = 0.0
    partial: _Partial | None = None
    resumed = Resumed()
    started_with: int | None = None  # a resumed run keeps its thread count: see threads.hold
    if state_path is not None and state_path.is_file():
        history, seconds, started_with, partial = _load_state(
            state_path, model, optimizer, schedule, shuffle
        )
        resumed = Resumed(len(history), partial.next_step if partial else 0)
        if distributed.is_main():  # said also without progress bars: it explains the time
            where = (f"at batch {resumed.batches + 1} of {steps_per_epoch} of epoch "
                     f"{resumed.epochs + 1}" if resumed.batches else f"after epoch {resumed.epochs}")  # fmt: skip
            tqdm.write(f"resuming {where} of {config.epochs} from {state_path}", file=sys.stderr)

    batches = _Batches(model, net, train_split, config, device, optimizer, schedule,
                       steps_per_epoch, progress, config.adversary(), config.defender())  # fmt: skip

    def save(partial: _Partial | None, shuffle_state: torch.Tensor) -> None:
        assert state_path is not None
        _save_state(state_path, model, optimizer, schedule, shuffle_state, history, seconds,
                    thread_count, partial)  # fmt: skip

    with threads.hold(started_with or threads.steady_count()) as thread_count:
        for epoch in range(len(history) + 1, config.epochs + 1):
            model.train()
            # The generator's state before this epoch's order: what a bookmark inside the
            # epoch saves, so the resumed run draws the same order.
            shuffle_before = shuffle.get_state()
            order = torch.randperm(n, generator=shuffle)
            at = partial if partial is not None and partial.epoch == epoch else _Partial(epoch)
            partial = None
            start = time.perf_counter() - at.elapsed
            bookmark = functools.partial(save, at, shuffle_before)
            batches.epoch(epoch, order, at, start, bookmark if bookmarks else None)
            seconds += time.perf_counter() - start
            seen_all, right_all, loss_all = distributed.sum_over_ranks(
                at.seen, at.right, at.loss_sum
            )
            model.eval()
            val_acc = accuracy(model, val_split.images, val_split.labels)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss_all / seen_all,
                    "train_accuracy": right_all / seen_all,
                    "val_accuracy": val_acc,
                }
            )
            if progress:
                tqdm.write(
                    f"epoch {epoch}: train loss {loss_all / seen_all:.4f}, val accuracy {val_acc:.4f}"
                )
            if state_path is not None and epoch < config.epochs:
                save(None, shuffle.get_state())
    return history, seconds, resumed


def _batch_loss(
    model: nn.Module,
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    now: tuple[ThreatModel, Schedule] | None,
    defender: ThreatModel | None,
    done: int,
    warmup: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's logits and loss by the recipe: standard, PGD or FGSM-RS (the attacked
    batch), TRADES (clean and attacked), preempt (attacked from a defensive point)."""
    if now is not None and defender is not None:
        grown = _scaled(defender, min(1.0, (done + 1) / warmup) if warmup > 0 else 1.0)
        x = preempt_point(model, x, y, grown, *now)
        logits = net(x)
        return logits, F.cross_entropy(logits, y)
    if now is not None and config.adversarial == "trades":
        x_adv = _trades_batch(model, x, *now)
        logits, logits_adv = net(torch.cat([x, x_adv])).split(len(x))
        loss = (
            F.cross_entropy(logits, y) + config.trades_beta * trades_kl(logits, logits_adv).mean()
        )
        return logits, loss
    if now is not None:
        x = _adversarial_batch(model, x, y, *now)
    logits = net(x)
    return logits, F.cross_entropy(logits, y)


def _save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    shuffle_state: torch.Tensor,
    history: list[dict[str, float]],
    seconds: float,
    thread_count: int,
    partial: _Partial | None = None,
) -> None:
    """Everything the next batch depends on: weights, optimiser, schedule and RNG states,
    the thread count (the weight gradients' rounding follows it) and, inside an epoch, its
    progress. ``shuffle_state`` is the order generator's state before the order of the epoch
    under way (or the next) is drawn."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "shuffle": shuffle_state,
        "rng": torch.get_rng_state(), "history": history, "seconds": seconds,
        "threads": thread_count, "partial": None if partial is None else vars(partial),
    }  # fmt: skip
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _load_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    shuffle: torch.Generator,
) -> tuple[list[dict[str, float]], float, int | None, _Partial | None]:
    """Restore what :func:`_save_state` saved; the file cannot run code (weights_only).
    Also returns the run's thread count (None for a state saved before it was recorded) and
    the progress of the epoch it was saved in (None: saved after a whole epoch)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        shuffle.set_state(state["shuffle"])
        torch.set_rng_state(state["rng"])
        partial = _Partial(**state["partial"]) if state.get("partial") else None
    except Exception as exc:  # a corrupt or foreign state file: say which, do not guess
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DefpertError(
            f"{path} is not a readable training state ({first}); remove it or use --overwrite"
        ) from None
    count = state.get("threads")
    return (list(state["history"]), float(state["seconds"]), int(count) if count else None,
            partial)  # fmt: skip


LR_SCHEDULES = ("cosine", "cyclic")
TRAIN_PRECISIONS = ("fp32", "bf16")


def _lr_schedule(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay to 0, or Wong et al.'s cyclic schedule: linear 0 -> lr -> 0."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    half = max(total_steps / 2, 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1 - abs(step + 1 - half) / half)
    )


def _warmed_up(
    adversary: tuple[ThreatModel, Schedule], done: int, warmup: float
) -> tuple[ThreatModel, Schedule]:
    """The adversary at a radius grown linearly over the first ``warmup`` batches.

    Starting adversarial training at the full radius can collapse a fresh model to one
    class; the step size shrinks with the radius so the attack keeps its shape.
    """
    fraction = 1.0 if warmup <= 0 else min(1.0, (done + 1) / warmup)
    if fraction >= 1.0:
        return adversary
    threat, schedule = adversary
    return make_threat(threat.norm, threat.eps * fraction), replace(
        schedule, step_size=schedule.step_size * fraction
    )


# How a model is trained when the user names only what matters to them. Adversarial
# training follows Wong et al.'s fast schedule (Adam, batch 100, cyclic learning rate up to
# 5e-3, 10 epochs) with the radius grown over the first fifth of training: started at the
# full radius with the standard schedule, PGD training on MNIST collapsed to one class.
STANDARD_RECIPE: dict[str, Any] = {"epochs": 3, "batch_size": 64, "lr": 2e-3,
                                   "lr_schedule": "cosine", "adv_warmup": 0.0}  # fmt: skip
ADVERSARIAL_RECIPE: dict[str, Any] = {"epochs": 10, "batch_size": 100, "lr": 5e-3,
                                      "lr_schedule": "cyclic", "adv_warmup": None}  # fmt: skip


def recipe(adversarial: str = "none", **given: Any) -> dict[str, Any]:
    """Training settings: those ``given`` (None = not given), the recipe's for the rest.

    The radius warm-up defaults to a fifth of the epochs for adversarial training.
    """
    base = STANDARD_RECIPE if adversarial == "none" else ADVERSARIAL_RECIPE
    settings = {k: given[k] if given.get(k) is not None else v for k, v in base.items()}
    if settings["adv_warmup"] is None:
        settings["adv_warmup"] = settings["epochs"] / 5
    return settings


# The radius adversarial training defends by default (Madry et al. used 0.3 on MNIST).
ADV_EPS = {"mnist": 0.3, "fashion-mnist": 0.1, "digits": 0.3}
ADVERSARIAL = ("pgd", "trades", "fgsm-rs", "preempt")


def _scaled(threat: ThreatModel, fraction: float) -> ThreatModel:
    """``threat`` with its radius times ``fraction`` (the radius warm-up)."""
    return threat if fraction >= 1.0 else make_threat(threat.norm, threat.eps * fraction)


def preempt_point(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    defender: ThreatModel,
    threat: ThreatModel,
    schedule: Schedule,
) -> torch.Tensor:
    """Moon et al.'s training point (AAAI 2022, robust-to-robustification training).

    First a cheap defensive point: one signed step of 1.25 ``defender.eps`` *descending*
    cross-entropy from a random start in the defender's ball (the one-step stand-in for
    the robustification the model will meet at test time); then ``schedule``'s PGD from a
    random start within ``threat``'s ball around that point (the man-in-the-middle attack,
    its budget measured from the defended point). The result lies within
    ``defender.eps + threat.eps`` of ``x`` and in [0, 1]. Computed in eval mode.
    """
    training = model.training
    model.eval()
    try:
        start = defender.random_init(x.shape, None).to(x.device)  # the private, seeded RNG
        one_step = Schedule(1, 1.25 * defender.eps, ascend=False)
        x_def = perturb_batch(model, x, y, threat=defender, objective=cross_entropy,
                              schedule=one_step, delta0=start).detach()  # fmt: skip
        start = threat.random_init(x.shape, None).to(x.device)
        return perturb_batch(model, x_def, y, threat=threat, objective=cross_entropy,
                             schedule=schedule, delta0=start).detach()  # fmt: skip
    finally:
        model.train(training)


def _adversarial_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, schedule: Schedule
) -> torch.Tensor:
    """The batch's adversarial version, found with the model in eval mode (no dropout)."""
    training = model.training
    model.eval()
    try:
        start = threat.random_init(x.shape, None).to(x.device)  # the private, seeded RNG
        return perturb_batch(model, x, y, threat=threat, objective=cross_entropy,
                             schedule=schedule, delta0=start).detach()  # fmt: skip
    finally:
        model.train(training)


def trained_as(training: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a card's training settings are ``config``'s, with the default training radius
    resolved on both sides (a card may say ``None`` or the dataset's default)."""

    def resolved(settings: dict[str, Any]) -> dict[str, Any]:
        if settings.get("adv_eps") is None:
            settings = {**settings, "adv_eps": ADV_EPS.get(str(settings.get("dataset")), 0.3)}
        return settings

    have, want = resolved(training), resolved(config.settings())
    return all(have.get(k) == v for k, v in want.items())


def matching_shipped(config: TrainConfig, root: Path | None = None) -> str | None:
    """The shipped checkpoint trained with exactly this config, if any."""
    root = root or shipped.SHIPPED_DIR
    for name in sorted(shipped.index(root)):
        try:
            training = read_card(root / name).get("training", {})
        except DefpertError:
            continue
        if trained_as(training, config):
            return name
    return None


def trades_kl(logits: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x_adv)) per example (B,): TRADES's robustness term (Zhang et al., 2019)."""
    return F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.log_softmax(logits, dim=1), reduction="none",
        log_target=True,
    ).sum(dim=1)  # fmt: skip


def _trades_batch(
    model: nn.Module, x: torch.Tensor, threat: ThreatModel, schedule: Schedule
) -> torch.Tensor:
    """The point of the ball that moves the model's output farthest from the clean output
    (KL), found with the model in eval mode from 0.001 * Gaussian noise around ``x``."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean = model(x).detach()
        start = 0.001 * torch.randn(x.shape).to(x.device)  # the private, seeded RNG
        return perturb_batch(model, x, clean.argmax(1), threat=threat,
                             objective=lambda logits, _: trades_kl(clean, logits),
                             schedule=schedule, delta0=start).detach()  # fmt: skip
    finally:
        model.train(training)


DEFAULT_EPOCHS = {"mnist": 3, "fashion-mnist": 3, "digits": 40}


def default_checkpoint(
    dataset: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    report: Any = None,
) -> Path:
    """The default ``cnn`` for a dataset, trained on first use and reused afterwards.

    Commands started side by side on a fresh cache share one training: the first trains
    under a lock beside the model's directory, the others wait for it and reuse its model.
    """
    import fcntl

    spec = get_spec(dataset)
    epochs = DEFAULT_EPOCHS.get(spec.name, 3)
    run = default_cache_dir() / "models" / f"{spec.name}-cnn-e{epochs}-s0"

    def ready() -> bool:
        return (run / "model.safetensors").is_file() and (run / "model.json").is_file()

    if ready():
        return run
    ensure_dir(run.parent)
    with open(run.parent / f".{run.name}.lock", "a+") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if report:
                report(
                    f"waiting for another defpert command to finish training the default cnn into {run}"
                )
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the other one ends
        if ready():
            return run
        if report:
            report(
                f"no checkpoint given: training the default cnn on {spec.name} ({count(epochs, 'epoch')}) into {run}"
            )
        config = TrainConfig(dataset=spec.name, epochs=epochs, batch_size=64, lr=2e-3)
        train(config, out=run, data_dir=data_dir, device=device, progress=progress)
    return run
