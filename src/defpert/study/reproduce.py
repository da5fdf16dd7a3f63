"""``defpert reproduce``: the whole study in one command, resumable.

    defpert reproduce --quick            # a few hundred test images, one epoch: minutes
    defpert reproduce                    # the full 10,000-image test set
    defpert reproduce --dataset fashion-mnist
    defpert reproduce --limit 2000 --strong-limit 500   # a slice of the test set, cheaper strong attack

Stages (each saved in the run directory and reused when its config is unchanged, so an
interrupted run resumes): train the model, RQ1 for each threat model and every defense
(weak, strong, adaptive), the accuracy-versus-eps sweep, the figures (t-SNE, image grids,
curves) and the report (``report.html``, ``report.md``, ``results.csv``, ``metrics.json``).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from defpert.core.engine import madry_step_size
from defpert.data.datasets import get_spec, load_split
from defpert.defenses.registry import ORIGINAL, get, names
from defpert.errors import DefpertError
from defpert.models.checkpoint import environment, load_checkpoint, read_card
from defpert.models.shipped import install
from defpert.report.document import html_report, markdown, write_csv
from defpert.report.figures import accuracy_curves, budget_curves, image_grid
from defpert.report.tsne import draw_tsne
from defpert.runtime import distributed
from defpert.runtime.devices import pick_device
from defpert.runtime.rundir import (
    claim_run,
    ensure_dir,
    json_digest,
    read_json,
    write_atomic,
    write_bytes_atomic,
    write_json,
)
from defpert.study import store as result_store
from defpert.study.config import DPConfig
from defpert.study.dp import run_dp
from defpert.study.layout import RunLayout
from defpert.study.options import DPOptions
from defpert.study.store import load_npz
from defpert.study.sweep import run_budget_sweep, run_sweep
from defpert.train import ADV_EPS, TrainConfig, matching_shipped, recipe, train, trained_as
from defpert.wording import count

Report = Callable[[str], None]

# The original study's two threat models; other datasets get radii suited to them.
THREATS: dict[str, list[dict[str, Any]]] = {
    "mnist": [
        {"norm": "linf", "steps": 20, "eps": 0.2, "step_size": 0.01},
        {"norm": "l2", "steps": 40, "eps": 2.5, "step_size": 0.075},
    ],
    "fashion-mnist": [
        {"norm": "linf", "steps": 20, "eps": 0.1, "step_size": 0.005},
        {"norm": "l2", "steps": 40, "eps": 1.5, "step_size": 0.045},
    ],
    "digits": [
        {"norm": "linf", "steps": 20, "eps": 0.2, "step_size": 0.01},
        {"norm": "l2", "steps": 40, "eps": 1.0, "step_size": 0.03},
    ],
}
# A study can compare models trained in several ways (``--models``).
# The defender's budgets of the budget sweep, as fractions of the attacker's eps.
BUDGET_FRACTIONS = (0.0, 0.5, 1.0, 1.5, 2.0)
# The study's defenses: every method once (robustify's label-free variant on request).
STUDY_DEFENSES = ("ce", "margin", "robustify", "anti-adversary", "hedge")
MODEL_KINDS = {"standard": "none", "fgsm-rs": "fgsm-rs", "pgd": "pgd", "trades": "trades"}
SWEEP_EPS = {"mnist": [0.05, 0.1, 0.2, 0.3], "fashion-mnist": [0.025, 0.05, 0.1, 0.15],
             "digits": [0.05, 0.1, 0.2, 0.3]}  # fmt: skip


def _study_dp() -> DPOptions:
    """The study's ``dp`` settings: ``dp``'s own defaults (study.options), every defense."""
    return DPOptions(defenses=STUDY_DEFENSES)


@dataclass
class ReproduceConfig:
    """The whole study's settings; ``quick()`` gives the small-slice version.

    ``dp`` holds the settings of every ``dp`` run of the study (declared once, in
    :class:`DPOptions`); each threat model's norm, eps, steps and step size come from
    ``threats``, and ``dp.seed`` seeds the training as well."""

    dataset: str = "mnist"
    model: str = "cnn"
    epochs: int = 3
    limit: int | None = None  # test images of the study (None: all)
    dp: DPOptions = field(default_factory=_study_dp)
    sweep_limit: int = 1000
    sweep_strong_limit: int = 200
    tsne_per_class: int = 100
    threats: list[dict[str, Any]] = field(default_factory=list)
    sweep_eps: list[float] = field(default_factory=list)
    models: tuple[str, ...] = ("standard",)  # how each studied model is trained: MODEL_KINDS
    # PGD steps per batch of the "pgd" and "trades" models (Madry et al.: 40 of 0.01; 10 of
    # 2.5 eps / 10 costs a quarter, and is what the shipped checkpoints were trained with)
    adv_steps: int = 10
    adv_epochs: int = 10  # adversarially trained models (the rest of the recipe: train.recipe)

    @property
    def seed(self) -> int:
        return self.dp.seed

    def dp_config(self, threat: dict[str, Any], **changes: Any) -> DPConfig:
        """The ``dp`` run of one threat model: the study's settings, the threat's, ``changes``."""
        return DPConfig(**{**asdict(self.dp), **threat, **changes})

    def train_config(self, kind: str) -> Any:
        """How the model of a kind (a key of ``MODEL_KINDS``) is trained for this study."""
        if kind not in MODEL_KINDS:
            raise DefpertError(
                f"unknown model kind {kind!r}; choose from: {', '.join(MODEL_KINDS)}"
            )
        adversarial = MODEL_KINDS[kind]
        epochs = self.epochs if adversarial == "none" else self.adv_epochs
        eps = ADV_EPS.get(self.dataset, 0.3)
        return TrainConfig(dataset=self.dataset, model=self.model, seed=self.seed,
                           adversarial=adversarial, adv_eps=eps, adv_steps=self.adv_steps,
                           adv_step_size=madry_step_size(eps, self.adv_steps),
                           **recipe(adversarial, epochs=epochs))  # fmt: skip

    @classmethod
    def for_dataset(cls, dataset: str, *, quick: bool = False, seed: int = 0) -> ReproduceConfig:
        spec = get_spec(dataset)
        cfg = cls(dataset=spec.name, threats=THREATS[spec.name], sweep_eps=SWEEP_EPS[spec.name])
        cfg.dp.seed = seed
        if spec.name == "digits":
            cfg.epochs = cfg.adv_epochs = 40
        if quick:
            dp = cfg.dp
            cfg.epochs = 1 if spec.name != "digits" else 20
            cfg.limit, dp.strong_limit, dp.strong_steps = 300, 100, 50
            dp.strong_tier, dp.square_queries, dp.adaptive_square_queries = "quick", 200, 50
            dp.adaptive_limit, cfg.sweep_limit, cfg.sweep_strong_limit = 30, 200, 50
            cfg.tsne_per_class, cfg.adv_steps, cfg.adv_epochs = 20, 10, cfg.epochs
            dp.inner_steps = 5
        return cfg


def _stage(
    path: Path, config: dict[str, Any], compute: Callable[[], Any], report: Report, name: str
) -> Any:
    """Reuse ``path`` if it was computed with the same config and its result is as saved;
    otherwise compute and save (with the digest of its result, checked on reuse)."""
    # compare as saved (tuples become lists); results of other code are never reused
    config = json.loads(json.dumps({**config, "code": result_store.code_version()}))
    saved = _saved_stage(path, config, report) if distributed.is_main() else None
    if distributed.main_decides(saved is not None):  # every rank alike
        report(f"{name}: reused from {path}")
        return (saved if saved is not None else read_json(path))["result"]
    started = time.perf_counter()
    result = compute()
    write_json(path, {"config": config, "result": result, "result_sha256": json_digest(result),
                      "seconds": time.perf_counter() - started})  # fmt: skip
    return result


def _training_seconds(model_dir: Path, report: Report) -> float | None:
    """The training time a model directory's metrics record (None when it cannot be read)."""
    metrics = result_store.readable_state(model_dir / "metrics.json", report)
    seconds = metrics.get("train_seconds") if metrics is not None else None
    return float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else None


def _saved_stage(path: Path, config: dict[str, Any], report: Report) -> dict[str, Any] | None:
    """A saved stage of this config whose result still has the digest it was saved with;
    None otherwise (an unreadable or altered one is said in one line)."""
    saved = result_store.readable_state(path, report)
    if saved is None or saved.get("config") != config:
        return None
    if "result" not in saved or saved.get("result_sha256") != json_digest(saved["result"]):
        report(f"recomputing {path}: its result is not the one that was saved (digest differs)")
        return None
    return saved


def reproduce(
    config: ReproduceConfig,
    out: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    progress: bool = False,
    report: Report | None = None,
    overwrite: bool = False,
    retrain: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the whole study into ``out``; return the collected metrics.

    ``out`` is locked for the run; a study of other settings there is refused unless
    ``overwrite``.
    """
    for kind in config.models:
        config.train_config(kind)  # unknown kinds fail before any work
    outputs = ("stages", "sweep", "figures", "report.html", "report.md", "results.csv",
               "metrics.json", *(_suffixed("model", k) for k in config.models),
               *(f"rq1-{_suffixed(t['norm'], k)}" for t in config.threats for k in config.models),
               *(f"budget-{k}" for k in config.models))  # fmt: skip
    with claim_run(out, {"command": "reproduce", **asdict(config)}, overwrite=overwrite,
                   remove_on_overwrite=outputs) as run:  # fmt: skip
        return _reproduce(config, run, data_dir, device, progress, report, retrain)


def _reproduce(
    config: ReproduceConfig,
    run: Path,
    data_dir: str | os.PathLike[str] | None,
    device: str | None,
    progress: bool,
    report: Report | None,
    retrain: bool = False,
) -> dict[str, Any]:
    say: Report = report or (lambda _m: None)
    study = _Study(config, run, data_dir, pick_device(device), progress, say)
    started = time.perf_counter()
    test = load_split(config.dataset, "test", data_dir, progress=progress, report=say).head(
        config.limit
    )  # fetches the dataset on first use, saying so
    trained, loaded, cards = {}, {}, {}
    results_by_threat: dict[str, list[dict[str, Any]]] = {}
    for kind in config.models:  # 1. the models and 2. RQ1 for each model and threat model
        loaded[kind], cards[kind], trained[kind] = study.model(kind, retrain)
        results_by_threat.update(study.rq1(kind, loaded[kind], cards[kind], test))
    first_kind = config.models[0]
    model, card = loaded[first_kind], cards[first_kind]
    sweep_data = test.head(config.sweep_limit)
    sweep_rows = study.eps_sweep(model, card, sweep_data)  # 3. accuracy versus eps
    robust_kinds = [k for k in config.models if k != "standard"]
    budget = (  # 3b. accuracy versus the defender's budget, the first robust model
        study.budget_sweep(robust_kinds[0], loaded[robust_kinds[0]], trained, sweep_data)
        if robust_kinds else {}
    )  # fmt: skip
    figures = _figures(run, model, card, config, results_by_threat, sweep_rows, say)  # 4.
    if budget:
        figures[study.budget_caption(budget)] = _save_figure(
            run / "figures" / f"budget-{budget['model']}.png", budget_curves(budget["rows"])
        )
    metrics = {
        "dataset": config.dataset,
        "model": trained[first_kind],
        "models": trained,
        "rq1": results_by_threat,
        "sweep": sweep_rows,
        "defender_budget": budget,
        "seconds_this_invocation": time.perf_counter() - started,
        "compute_seconds": study.compute_seconds(trained, results_by_threat, budget),
        "device": str(study.device),
        "environment": environment(study.device),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    _write_report(run, config, metrics, figures, results_by_threat, sweep_rows)  # 5.
    say(f"report: {run / 'report.html'}")
    return metrics


@dataclass
class _Study:
    """The stages of one study run, each saved under ``run`` and reused when unchanged."""

    config: ReproduceConfig
    run: Path
    data_dir: str | os.PathLike[str] | None
    device: torch.device
    progress: bool
    say: Report

    def model(
        self, kind: str, retrain: bool
    ) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
        """The model of ``kind``: reused, the shipped checkpoint of its settings, or trained
        here; with its card and what the report says of its training."""
        config, say = self.config, self.say
        model_dir = self.run / _suffixed("model", kind)
        train_cfg = config.train_config(kind)
        shipped = None if retrain else matching_shipped(train_cfg)
        if _card_matches(model_dir, train_cfg):
            say(f"model ({kind}): reused from {model_dir}")
        elif shipped is not None:
            install(shipped, model_dir)
            say(f"model ({kind}): the shipped checkpoint {shipped} (SHA-256 checked), in "
                f"{model_dir}; --retrain trains it here instead")  # fmt: skip
        else:
            say(f"model ({kind}): training {config.model} on {config.dataset} for "
                f"{count(train_cfg.epochs, 'epoch')}")  # fmt: skip
            # overwrite: the study's own model directory follows the study's config
            train(train_cfg, out=model_dir, data_dir=self.data_dir, device=self.device,
                  progress=self.progress, overwrite=True)  # fmt: skip
        model, card = load_checkpoint(model_dir, map_location=self.device)
        trained = {"dir": str(model_dir), "test_accuracy": card["accuracy"]["test"],
                   "training": card["training"]["kind"],
                   "training_seconds": _training_seconds(model_dir, say)}  # fmt: skip
        return model, card, trained

    def rq1(self, kind: str, model: torch.nn.Module, card: dict[str, Any],
            test: Any) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
        """RQ1 (``dp``) of one model under each threat model, keyed like ``linf-pgd``."""
        out = {}
        for threat in self.config.threats:
            dp = self.config.dp_config(threat)
            key = _suffixed(threat["norm"], kind)
            stage_cfg = {"dp": asdict(dp), "n": len(test), "model": card.get("date")}
            results = _stage(
                self.run / "stages" / f"rq1-{key}.json", stage_cfg,
                functools.partial(run_dp, model, test, dp, out=self.run / f"rq1-{key}",
                                  progress=self.progress, report=self.say),
                self.say, f"RQ1 {key}",
            )  # fmt: skip
            out[key] = [{**r, "model": kind} for r in results]
        return out

    def eps_sweep(self, model: torch.nn.Module, card: dict[str, Any],
                  data: Any) -> list[dict[str, Any]]:  # fmt: skip
        """Accuracy versus eps: the first threat model's norm, the original's defense."""
        config = self.config
        base = config.dp_config(config.threats[0], defenses=(ORIGINAL,), adaptive_limit=0,
                                strong_limit=config.sweep_strong_limit)  # fmt: skip
        return _stage(
            self.run / "stages" / "sweep.json",
            {"base": asdict(base), "eps": config.sweep_eps, "n": len(data), "model": card.get("date")},
            lambda: run_sweep(model, data, base, config.sweep_eps, progress=self.progress,
                              report=self.say, out=self.run / "sweep"),
            self.say, "sweep",
        )  # fmt: skip

    def budget_sweep(self, kind: str, model: torch.nn.Module, trained: dict[str, Any],
                     data: Any) -> dict[str, Any]:  # fmt: skip
        """Accuracy versus the defender's budget for the original's method and the
        label-aware robustification, where the study has them ({} where it has neither)."""
        config = self.config
        robustifying = tuple(n for n in names() if get(n).inner_attack and get(n).uses_label)
        methods = tuple(d for d in (ORIGINAL, *robustifying) if d in config.dp.defenses)
        if not methods:
            return {}
        first = config.threats[0]
        base = config.dp_config(first, defenses=methods, adaptive_limit=0,
                                strong_limit=config.sweep_strong_limit)  # fmt: skip
        budgets = [round(f * first["eps"], 6) for f in BUDGET_FRACTIONS]
        rows = _stage(
            self.run / "stages" / f"budget-{kind}.json",
            {"base": asdict(base), "budgets": budgets, "n": len(data), "model": trained[kind]["dir"]},
            lambda: run_budget_sweep(model, data, base, budgets, progress=self.progress,
                                     report=self.say, out=self.run / f"budget-{kind}"),
            self.say, f"defender's budget ({kind} model)",
        )  # fmt: skip
        return {"model": kind, "rows": rows}

    def budget_caption(self, budget: dict[str, Any]) -> str:
        first, config = self.config.threats[0], self.config
        return (f"Accuracy versus the defender's budget ({budget['model']} model, "
                f"{first['norm']} eps {first['eps']:g} measured from the {config.dp.budget_from} point, "
                f"strong attack on the first {config.sweep_strong_limit} examples)")  # fmt: skip

    def compute_seconds(self, trained: dict[str, Any], results_by_threat: dict[str, Any],
                        budget: dict[str, Any]) -> dict[str, float]:  # fmt: skip
        """Each stage's compute (a reused stage keeps the time it took when it ran), and
        their total: the study's one time."""
        compute = {f"train {k}": m["training_seconds"] or 0.0 for k, m in trained.items()}
        stages = [*(f"rq1-{key}" for key in results_by_threat), "sweep"]
        stages += [f"budget-{budget['model']}"] if budget else []
        for name in stages:
            compute[name.replace("-", " ", 1)] = read_json(self.run / "stages" / f"{name}.json")[
                "seconds"
            ]
        compute["total"] = sum(compute.values())
        return compute


def _suffixed(name: str, kind: str) -> str:
    """``linf`` for the standard model, ``linf-pgd`` for the PGD-trained one, and so on."""
    return name if kind == "standard" else f"{name}-{kind}"


def _card_matches(model_dir: Path, cfg: Any) -> bool:
    if not (model_dir / "model.safetensors").is_file():
        return False

    try:
        training = read_card(model_dir).get("training", {})
    except DefpertError:
        return False
    return trained_as(training, cfg)


def _save_figure(path: Path, fig: Figure) -> Path:
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path


def _figures(
    run: Path,
    model: torch.nn.Module,
    card: dict[str, Any],
    config: ReproduceConfig,
    results_by_threat: dict[str, list[dict[str, Any]]],
    sweep_rows: list[dict[str, Any]],
    say: Report,
) -> dict[str, Path]:

    figs: dict[str, Path] = {}
    fig_dir = ensure_dir(run / "figures")
    classes = card.get("classes")
    for key in (_suffixed(t["norm"], config.models[0]) for t in config.threats):  # first model
        layout = RunLayout(run / f"rq1-{key}")
        versions = {"original": load_npz(layout.version("original")),
                    "adversarial": load_npz(layout.version("adversarial")),
                    f"defensive ({ORIGINAL})": load_npz(layout.version("defensive", ORIGINAL)),
                    f"defensive-attacked ({ORIGINAL})": load_npz(layout.version("defensive-attacked", ORIGINAL))}  # fmt: skip
        say(f"figures: t-SNE and image grid for {key}")
        tsne = draw_tsne(versions, space="features", model=model, seed=config.seed,
                         per_class=config.tsne_per_class, class_names=classes)  # fmt: skip
        figs[f"{key}: t-SNE of the model's penultimate features (RQ2)"] = _save_figure(
            fig_dir / f"tsne-{key}.png", tsne
        )
        labels = torch.from_numpy(versions["original"][1])
        grid = image_grid({k: torch.from_numpy(v[0]) for k, v in versions.items()}, labels, model, n=6,
                          class_names=classes)  # fmt: skip
        figs[f"{key}: examples with prediction and confidence; perturbations on a colour scale"] = (
            _save_figure(fig_dir / f"grid-{key}.png", grid)
        )
    if sweep_rows:
        norm = config.threats[0]["norm"]
        figs["Accuracy versus eps (defense: ce)"] = _save_figure(
            fig_dir / f"sweep-{norm}.png",
            accuracy_curves(sweep_rows, title=f"{norm} PGD, {config.dataset}"),
        )
    return figs


def _write_report(
    run: Path,
    config: ReproduceConfig,
    metrics: dict[str, Any],
    figures: dict[str, Path],
    results_by_threat: dict[str, list[dict[str, Any]]],
    sweep_rows: list[dict[str, Any]],
) -> None:
    n = next(iter(results_by_threat.values()))[0]["n"]
    summary = [
        f"dataset: {config.dataset}; model: {config.model}, {count(config.epochs, 'epoch')}, seed {config.seed}, "
        f"test accuracy {metrics['model']['test_accuracy']:.2%}",
        f"test examples: {n}; strong attack on {min(config.dp.strong_limit, n)}, adaptive attack "
        f"on {min(config.dp.adaptive_limit, n)} (at most)",
        f"device: {metrics['device']}; generated {metrics['date']}",
    ]
    summary.append(f"threat models for {config.dataset}: " + "; ".join(
        f"{t['norm']} eps {t['eps']:g} (weak attack PGD-{t['steps']}, step {t['step_size']:g})"
        for t in config.threats))  # fmt: skip
    if len(config.models) > 1:
        adv = config.train_config(next(k for k in config.models if k != "standard"))
        summary.append(
            f"adversarial training: linf eps {adv.adv_eps:g} for {count(adv.epochs, 'epoch')} (radius grown "
            f"over {count(adv.adv_warmup, 'epoch')}), batch {adv.batch_size}, Adam cyclic learning rate up to "
            f"{adv.lr:g}"
            + (
                f"; pgd: {adv.adv_steps} steps of {adv.adv_step_size:.3g}"
                if "pgd" in config.models
                else ""
            )
        )
        summary.append("models: " + "; ".join(
            f"{k} (test accuracy {m['test_accuracy']:.2%}, trained in {m['training_seconds']:.0f} s)"
            for k, m in metrics["models"].items()))  # fmt: skip
    compute = metrics["compute_seconds"]
    summary.append(
        f"compute time: {compute['total']:.0f} s in all ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in compute.items() if k != "total")
        + "; a stage finished after an interruption counts its last run only)"
    )
    rel = {caption: str(path.relative_to(run)) for caption, path in figures.items()}
    md = markdown(f"defpert study: {config.dataset}", summary, results_by_threat, rel, sweep_rows,
                  strong_steps=config.dp.strong_steps, models=metrics["models"])  # fmt: skip
    write_bytes_atomic(run / "report.md", md.encode())
    write_bytes_atomic(run / "report.html", html_report(md, figures).encode())
    write_csv(run / "results.csv", [r for rs in results_by_threat.values() for r in rs])
    write_json(run / "metrics.json", metrics)
