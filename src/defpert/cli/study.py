"""``defpert sweep`` and ``defpert reproduce``."""

from __future__ import annotations

import argparse
import math
from typing import Any

from defpert.cli.common import say
from defpert.defenses.registry import ORIGINAL
from defpert.errors import DefpertError
from defpert.results import BudgetRow, Measured, SweepRow
from defpert.wording import aligned, percent


def add_study_parsers(sub: Any) -> None:
    from defpert.cli.common import add_common
    from defpert.cli.dp import add_config_options, add_strong_arguments

    sw = sub.add_parser(
        "sweep", help="accuracy versus eps, original and defensive, weak and strong"
    )
    sw.set_defaults(handler="defpert.cli.study:run_sweep_command")
    sw.add_argument("-p", "--norm", default="linf")
    sw.add_argument("--eps", help="comma-separated radii (default: 0.05,0.1,0.2,0.3); with "
                    "--defense-eps, the attacker's one radius (default: 0.2)")  # fmt: skip
    sw.add_argument("--defense-eps", metavar="LIST",
                    help="sweep the defender's budget instead (comma-separated, 0 = no defense), "
                    "the attacker's eps fixed")  # fmt: skip
    sw.add_argument("-k", "--steps", type=int, default=20)
    sw.add_argument("--defense", default=ORIGINAL, help="comma-separated with --defense-eps")
    sw.add_argument("--checkpoint")
    sw.add_argument("--dataset", default="mnist")
    sw.add_argument("--limit", type=int, default=1000)
    sw.add_argument("--strong-limit", type=int, default=200)
    add_strong_arguments(sw)
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--device", default="auto")
    sw.add_argument("--out", help="run directory (default: runs/sweep-<dataset>-<norm>)")
    sw.add_argument("--overwrite", action="store_true",
                    help="replace the results of other settings in --out (default: refuse)")  # fmt: skip
    add_common(sw)

    rp = sub.add_parser("reproduce", help="the whole study with a report, in one command")
    rp.set_defaults(handler="defpert.cli.study:run_reproduce_command")
    rp.add_argument("--dataset", default="mnist")
    rp.add_argument("--quick", action="store_true", help="a small slice: minutes on 2 CPU cores")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--device", default="auto")
    rp.add_argument(
        "--out",
        help="run directory (default: runs/reproduce-<dataset>[-quick], then the settings given)",
    )
    rp.add_argument("--defense", default="all",
                    help="comma-separated defensive perturbation methods, or 'all'")  # fmt: skip
    rp.add_argument("--models", default="standard",
                    help="comma-separated: how each compared model is trained: standard, fgsm-rs, pgd, trades")  # fmt: skip
    rp.add_argument("--epochs", type=int,
                    help="training epochs of the standard model (default: 3; --quick: 1)")  # fmt: skip
    rp.add_argument("--adv-epochs", type=int,
                    help="training epochs of the adversarially trained models (default: 10; --quick: 1)")  # fmt: skip
    rp.add_argument("--limit", type=int,
                    help="test images of the study (default: all; --quick: 300)")  # fmt: skip
    rp.add_argument("--strong-limit", type=int,
                    help="test images for the strong attack (default: 1000; --quick: 100)")  # fmt: skip
    rp.add_argument("--adaptive-limit", type=int,
                    help="test images for the adaptive attack through a reactive defense, at most "
                         "the strong attack's (default: 200; --quick: 30)")  # fmt: skip
    rp.add_argument("--strong", default=None, metavar="TIER",
                    help="strong suite tier: quick, standard or plus (default: standard; --quick: quick)")  # fmt: skip
    rp.add_argument("--budget-from", default="defended",
                    help="an attack on a defended point measures eps from: defended (default) or original")  # fmt: skip
    rp.add_argument("--square-queries", type=int,
                    help="queries of the Square attack, also through a reactive defense (default: the tier's)")  # fmt: skip
    add_config_options(rp, ("search_precision",))
    rp.add_argument("--retrain", action="store_true",
                    help="train every model here, even where a shipped checkpoint has its settings")  # fmt: skip
    rp.add_argument("--overwrite", action="store_true",
                    help="replace a study of other settings in --out (default: refuse)")  # fmt: skip
    add_common(rp)


def run_sweep_command(args: argparse.Namespace) -> int:
    from defpert.cli.common import dataset_path
    from defpert.cli.dp import default_out, strong_settings
    from defpert.data.datasets import get_spec, load_split
    from defpert.models.checkpoint import checkpoint_digest, load_checkpoint
    from defpert.report.figures import accuracy_curves
    from defpert.runtime.devices import pick_device
    from defpert.runtime.rundir import claim_run, ensure_dir, write_atomic, write_json
    from defpert.study.dp import DPConfig
    from defpert.study.sweep import STEP_FRACTION, parse_eps_list, run_sweep
    from defpert.train import default_checkpoint

    budgets = parse_eps_list(args.defense_eps) if args.defense_eps else None
    eps_values = parse_eps_list(args.eps or ("0.2" if budgets else "0.05,0.1,0.2,0.3"))
    if budgets and len(eps_values) != 1:
        raise DefpertError("--defense-eps sweeps the defender's budget at one attacker's --eps")
    if budgets and min(budgets) < 0:
        raise DefpertError(f"--defense-eps must be 0 or more, got {min(budgets):g}")
    defenses = tuple(d.strip() for d in args.defense.split(",") if d.strip())
    if not budgets and len(defenses) != 1:
        raise DefpertError("sweep over eps takes one --defense (several with --defense-eps)")
    spec = get_spec(args.dataset)
    if args.limit < 1:
        raise DefpertError(f"--limit must be at least 1, got {args.limit}")
    base = DPConfig(norm=args.norm, eps=eps_values[0], steps=args.steps,
                    step_size=STEP_FRACTION.get(args.norm, 0.05) * eps_values[0],
                    defenses=defenses, **strong_settings(args), strong_limit=args.strong_limit,
                    seed=args.seed, adaptive_limit=0)  # fmt: skip
    for eps in eps_values:
        DPConfig(**{**vars(base), "eps": eps}).validate()
    for note in dict.fromkeys(n for e in eps_values
                              for n in DPConfig(**{**vars(base), "eps": e}).doubtful(math.prod(spec.input_shape))):  # fmt: skip
        say(f"warning: {note}")
    args.out = args.out or default_out("budget" if budgets else "sweep", spec.name, base)
    ensure_dir(args.out)
    device = pick_device(args.device)
    data_dir = args.data_dir and dataset_path(args.data_dir, args.dataset)
    checkpoint = args.checkpoint or default_checkpoint(spec.name, data_dir=data_dir, device=device,
                                                       progress=args.progress, report=say)  # fmt: skip
    model, _ = load_checkpoint(checkpoint, expect_input_shape=spec.input_shape,
                               expect_dataset=spec.name, map_location=device)  # fmt: skip
    data = load_split(spec.name, "test", data_dir, progress=args.progress)
    if args.limit > len(data):
        say(f"warning: --limit {args.limit} is above the test split's {len(data):,} images; "
            f"using all {len(data):,}")  # fmt: skip
    data = data.head(args.limit)
    say(f"model: {checkpoint}; results: {args.out}")
    run_config = {"command": "sweep", "checkpoint": str(checkpoint),
                  "checkpoint_sha256": checkpoint_digest(checkpoint), "eps": eps_values,
                  "limit": args.limit, "base": vars(base),
                  **({"defense_eps": budgets} if budgets else {})}  # fmt: skip
    if budgets:
        return _budget_sweep(args, model, data, base, budgets, run_config, checkpoint, spec.name)
    outputs = ("sweep.json", f"sweep-{args.norm}.png", *(f"eps-{e:g}" for e in eps_values))
    with claim_run(
        args.out, run_config, overwrite=args.overwrite, remove_on_overwrite=outputs
    ) as out:
        rows = run_sweep(model, data, base, eps_values, progress=args.progress, report=say, out=out)
        write_json(
            out / "sweep.json", {"rows": rows, "config": vars(base), "checkpoint": str(checkpoint)}
        )
        fig = accuracy_curves(rows, title=f"{args.norm} PGD, {spec.name}, defense {args.defense}")
        write_atomic(
            out / f"sweep-{args.norm}.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png")
        )
    typed = [SweepRow.from_json(r) for r in rows]
    n, strong = typed[0].bare.clean.n, typed[0].bare.strong
    head = ["eps", f"original weak (n={n})", f"defensive weak (n={n})"]
    if strong is not None:
        head += [f"original strong (n={strong.n})", f"defensive strong (n={strong.n})"]

    def cells(r: SweepRow) -> list[str]:
        numbers = [r.bare.weak, r.defended.weak]
        numbers += [r.bare.strong, r.defended.strong] if strong is not None else []
        return [f"{r.eps:g}", *(percent(m.accuracy if m else None) for m in numbers)]

    print(aligned([head, *map(cells, typed)]))
    print(f"\nsaved sweep.json and sweep-{args.norm}.png under {out}")
    return 0


def _budget_sweep(
    args: argparse.Namespace, model: Any, data: Any, base: Any, budgets: list[float],
    run_config: dict[str, Any], checkpoint: Any, dataset: str,
) -> int:  # fmt: skip
    """``sweep --defense-eps``: accuracy versus the defender's budget."""
    from defpert.report.figures import budget_curves
    from defpert.runtime.rundir import claim_run, write_atomic, write_json
    from defpert.study.sweep import run_budget_sweep

    outputs = ("budget.json", f"budget-{args.norm}.png", *(f"eps-def-{e:g}" for e in budgets))
    with claim_run(
        args.out, run_config, overwrite=args.overwrite, remove_on_overwrite=outputs
    ) as out:
        rows = run_budget_sweep(model, data, base, budgets, progress=args.progress, report=say,
                                out=out)  # fmt: skip
        write_json(out / "budget.json", {"rows": rows, "config": vars(base),
                                         "checkpoint": str(checkpoint)})  # fmt: skip
        fig = budget_curves(rows, title=f"{args.norm} eps {base.eps:g}, {dataset}: "
                                        "accuracy versus the defender's budget")  # fmt: skip
        write_atomic(out / f"budget-{args.norm}.png",
                     lambda tmp: fig.savefig(tmp, dpi=120, format="png"))  # fmt: skip
    typed = [BudgetRow.from_json(r) for r in rows]
    first = typed[0].numbers
    weak_n = (first.weak_on_strong_examples or first.weak or first.clean).n
    head = ["defense", "eps_def", f"weak (n={weak_n})",
            f"strong (n={first.strong.n})" if first.strong else "strong"]  # fmt: skip

    def accuracy(m: Measured | None) -> str:
        return percent(m.accuracy if m is not None else None)

    body = [[r.defense if r.eps_def else "none", f"{r.eps_def:g}",
             accuracy(r.numbers.weak_on_strong_examples or r.numbers.weak),
             accuracy(r.numbers.strong)] for r in typed]  # fmt: skip
    body = [list(row) for row in dict.fromkeys(tuple(row) for row in body)]  # "none" once
    print(aligned([head, *body]))
    print(f"\nsaved budget.json and budget-{args.norm}.png under {out}")
    return 0


def run_reproduce_command(args: argparse.Namespace) -> int:
    from defpert.cli.common import dataset_path
    from defpert.study.reproduce import MODEL_KINDS, ReproduceConfig, reproduce

    config = ReproduceConfig.for_dataset(args.dataset, quick=args.quick, seed=args.seed)
    config.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.defense != "all":
        from defpert.core.threat import LinfBall
        from defpert.defenses import registry
        from defpert.defenses.methods import Defense

        config.dp.defenses = tuple(d.strip() for d in args.defense.split(",") if d.strip())
        for method in config.dp.defenses:
            Defense(method, LinfBall(0.1), steps=1, step_size=0.1)  # unknown names fail here
        if registry.ORIGINAL not in config.dp.defenses:  # the figures and sweep show it
            raise DefpertError(
                f"--defense must include {registry.ORIGINAL}, the original study's method"
            )
    if not config.models:
        raise DefpertError(f"--models needs at least one of: {', '.join(MODEL_KINDS)}")
    for flag, value in (("--epochs", args.epochs), ("--adv-epochs", args.adv_epochs),
                        ("--limit", args.limit), ("--strong-limit", args.strong_limit),
                        ("--adaptive-limit", args.adaptive_limit)):  # fmt: skip
        if value is not None and value < 1:
            raise DefpertError(f"{flag} must be at least 1, got {value}")
    config.epochs = args.epochs or config.epochs
    config.adv_epochs = args.adv_epochs or config.adv_epochs
    config.limit = args.limit or config.limit
    config.dp.strong_limit = args.strong_limit or config.dp.strong_limit
    config.dp.adaptive_limit = args.adaptive_limit or config.dp.adaptive_limit
    if args.strong is not None:
        from defpert.attacks import check_tier

        config.dp.strong_tier = check_tier(args.strong)
    from defpert.study.config import BUDGET_FROM

    if args.budget_from not in BUDGET_FROM:
        raise DefpertError(
            f"unknown --budget-from {args.budget_from!r}; choose one of: {', '.join(BUDGET_FROM)}"
        )
    config.dp.budget_from = args.budget_from
    if args.square_queries is not None:
        if args.square_queries < 1:
            raise DefpertError(f"--square-queries must be at least 1, got {args.square_queries}")
        config.dp.square_queries = config.dp.adaptive_square_queries = args.square_queries
    from defpert.attacks.search import check_search

    config.dp.search_precision = check_search(args.search_precision)
    out = args.out or reproduce_out(args, config)
    data_dir = args.data_dir and dataset_path(args.data_dir, args.dataset)
    metrics = reproduce(config, out, data_dir=data_dir, device=args.device,
                        progress=args.progress, report=say, overwrite=args.overwrite,
                        retrain=args.retrain)  # fmt: skip
    from defpert.report.document import terminal_summary

    print(terminal_summary(metrics["rq1"]))
    print("\n" + stage_times(metrics["compute_seconds"]))
    print(f"\nreport: {out}/report.html")  # the one total is the stage table's
    return 0


def reproduce_out(args: argparse.Namespace, config: Any) -> str:
    """``runs/reproduce-<dataset>[-quick]``, plus each setting given on the command line, so
    that studies of other settings never share (and refuse) one directory."""
    given = [
        ("+".join(config.models), args.models != "standard"),
        ("def-" + "+".join(config.dp.defenses), args.defense != "all"),
        (f"e{config.epochs}", args.epochs is not None),
        (f"adv-e{config.adv_epochs}", args.adv_epochs is not None),
        (f"n{config.limit}", args.limit is not None),
        (f"strong{config.dp.strong_limit}", args.strong_limit is not None),
        (f"adaptive{config.dp.adaptive_limit}", args.adaptive_limit is not None),
        (config.dp.strong_tier, args.strong is not None),
        (f"sq{config.dp.square_queries}", args.square_queries is not None),
        ("from-original", config.dp.budget_from != "defended"),
        (f"search-{config.dp.search_precision}", config.dp.search_precision != "fp32"),
    ]
    parts = [f"runs/reproduce-{config.dataset}", *(["quick"] if args.quick else [])]
    return "-".join(parts + [text for text, on in given if on])


def stage_times(compute_seconds: dict[str, float]) -> str:
    """Where the study's time went: each stage's compute (a resumed stage keeps the time it
    took when it ran), aligned, the total last."""
    rows = [["stage", "seconds", "minutes"]]
    rows += [[name, f"{s:,.0f}", f"{s / 60:.1f}"] for name, s in compute_seconds.items()]
    return aligned(rows)
