"""``defpert dp``: the RQ1 command (attack, defensive perturbation, attack again).

defpert dp -p linf -k 20 -e 0.2 -a 0.01
defpert dp -p l2 -k 40 -e 2.5 -a 0.075 --defense ce,margin,robustify,anti-adversary,hedge
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from defpert.cli.common import say
from defpert.errors import DefpertError
from defpert.study.layout import OUTPUTS as DP_OUTPUTS


def add_dp_parser(sub: Any) -> None:
    from defpert.cli.common import add_common
    from defpert.defenses import registry

    p = sub.add_parser("dp", help="attack, defensive perturbation, attack again (RQ1)")
    p.set_defaults(handler="defpert.cli.dp:run_dp_command")
    add_config_options(p, ("norm", "steps", "eps", "step_size"))
    p.add_argument("--defense", default=registry.ORIGINAL,
                   help=f"comma-separated, or 'all': {', '.join(registry.names())} "
                   f"(default: {registry.ORIGINAL})")  # fmt: skip
    add_config_options(p, ("defense_eps", "defense_steps", "defense_step_size",
                           "defense_optimizer", "inner_steps", "inner_restarts", "warm_start"))  # fmt: skip
    p.add_argument(
        "--checkpoint", help="run directory of a trained model (default: the default cnn)"
    )
    p.add_argument(
        "--dataset", default="mnist", help="mnist, fashion-mnist or digits (default: mnist)"
    )
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--limit", type=int, help="use the first N examples")
    add_config_options(p, ("seed", "random_start"))
    add_strong_arguments(p)
    add_config_options(p, ("strong_limit", "strong_steps", "strong_restarts", "square_queries",
                           "adaptive_square_queries", "budget_from", "adaptive_limit",
                           "batch_size", "precision", "search_precision"))  # fmt: skip
    p.add_argument("--save-splits", action="store_true",
                   help="also save the versions of the training and validation splits")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="run directory, created as needed (default: named by the "
                   "settings, e.g. runs/dp-mnist-linf-eps0.2-k20)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of other settings in --out (default: refuse)")  # fmt: skip
    p.add_argument("--lend-from", metavar="DIR",
                   help="copy the attacks on the original data (weak and strong) from another "
                   "run directory that ran the same attacks on the same data and model "
                   "(e.g. the same study with other defense settings or --budget-from)")  # fmt: skip
    add_common(p)


# What a dp run writes (removed by --overwrite before a run of other settings).


def add_config_options(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """Options made from ``DPConfig``'s fields: the flag, type, default and help of each are
    read from the field, never written a second time."""
    import dataclasses
    import typing

    from defpert.study.options import DPOptions

    fields = {f.name: f for f in dataclasses.fields(DPOptions)}
    hints = typing.get_type_hints(DPOptions)
    for name in names:
        f = fields[name]
        flags = [f.metadata["short"]] if f.metadata.get("short") else []
        flags.append("--" + name.replace("_", "-"))
        help_text = f.metadata["help"]
        kind = hints[name]
        if kind is bool:
            action = argparse.BooleanOptionalAction if name == "random_start" else "store_true"
            p.add_argument(*flags, action=action, default=f.default, dest=name, help=help_text)
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        shown = "" if f.default is None or "default:" in help_text else f" (default: {f.default})"
        p.add_argument(*flags, type=base, default=f.default, dest=name, help=help_text + shown)
    p.set_defaults(_config_options=(*(p.get_default("_config_options") or ()), *names))


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``DPConfig`` fields the options of :func:`add_config_options` set."""
    return {name: getattr(args, name) for name in args._config_options}


def add_strong_arguments(p: argparse.ArgumentParser) -> None:
    """``--strong TIER`` and ``--no-strong``, shared by dp, sweep and reproduce."""
    p.add_argument("--strong", default="standard", nargs="?", const="standard", metavar="TIER",
                   help="strong worst-case suite: quick, standard (AutoAttack's standard "
                   "version plus PGD-100; default) or plus")  # fmt: skip
    p.add_argument("--no-strong", dest="strong", action="store_const", const="",
                   help="skip the strong suite")  # fmt: skip


def default_out(command: str, dataset: str, config: Any) -> str:
    """A run directory named by the settings, so commands of other settings never collide."""
    name = f"runs/{command}-{dataset}-{config.norm}"
    if command == "dp":
        name += f"-eps{config.eps:g}-k{config.steps}"
        if config.strong and config.strong_tier != "standard":
            name += f"-{config.strong_tier}"
        if config.budget_from != "defended":
            name += f"-from-{config.budget_from}"
    return name


def strong_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The DPConfig fields set by ``--strong`` / ``--no-strong``."""
    return {"strong": bool(args.strong), "strong_tier": args.strong or "standard"}


# Above this estimate a run's length deserves a word before it starts.
LONG_RUN_SECONDS = 3600.0


def long_run(model: Any, images: Any, config: Any, device: Any) -> str:
    """A warning when the weak attack and the defenses alone (their PGD steps at this
    machine's measured rate) would take over an hour; empty otherwise or where unknown."""
    from defpert.runtime.calibrate import measured_rate

    rate = measured_rate(model, tuple(images.shape[1:]), device)
    defense_steps = config.defense_steps if config.defense_steps is not None else config.steps
    # the weak attack on the original data, then per defense: the defense and an attack on it
    image_steps = len(images) * (
        config.steps + len(config.defenses) * (defense_steps + config.steps)
    )
    if not rate or image_steps / rate < LONG_RUN_SECONDS:
        return ""
    hours = image_steps / rate / 3600
    return (f"the weak attack and the defenses alone are about {image_steps:,} image-steps, "
            f"{hours:,.1f} hours at this machine's measured {rate:,.0f} image-steps/s (the strong "
            "suite and the adaptive attack come on top); Ctrl-C stops it")  # fmt: skip


def run_dp_command(args: argparse.Namespace) -> int:
    from defpert.cli.common import dataset_path
    from defpert.data.datasets import get_spec
    from defpert.models.checkpoint import checkpoint_digest
    from defpert.runtime.devices import pick_device
    from defpert.runtime.rundir import claim_run

    spec = get_spec(args.dataset)
    config = _validated_config(args, spec)
    device = pick_device(args.device)
    _say_about_precision(config, device)
    data_dir = args.data_dir and dataset_path(args.data_dir, args.dataset)
    args.out = args.out or default_out("dp", spec.name, config)
    if args.lend_from is not None and not (Path(args.lend_from) / "config.json").is_file():
        raise DefpertError(
            f"--lend-from {args.lend_from}: not a defpert dp run directory (no config.json)"
        )
    checkpoint, model, card = _model_for(args, spec, data_dir, device)
    beyond = config.beyond_training_radius(card.get("threat_trained_against"))
    if beyond:
        say(f"warning: {beyond}")
    run_config = {"command": "dp", "checkpoint": str(checkpoint),
                  "checkpoint_sha256": checkpoint_digest(checkpoint),
                  "dataset": spec.name, "split": args.split, "limit": args.limit,
                  "save_splits": args.save_splits, "dp": vars(config)}  # fmt: skip
    with claim_run(
        args.out, run_config, overwrite=args.overwrite, remove_on_overwrite=DP_OUTPUTS
    ) as out:
        _run_splits(args, spec, config, model, checkpoint, data_dir, device, out)
    return 0


def _validated_config(args: argparse.Namespace, spec: Any) -> Any:
    """The run's ``DPConfig`` from the options, every setting checked before any work."""
    from defpert.data.datasets import SPLITS
    from defpert.defenses import registry
    from defpert.study.dp import DPConfig

    defenses = (
        registry.names()
        if args.defense == "all"
        else tuple(d.strip() for d in args.defense.split(","))
    )
    config = DPConfig(defenses=defenses, **strong_settings(args), **config_options(args))
    config.validate()
    for note in config.doubtful(math.prod(spec.input_shape)):
        say(f"warning: {note}")
    if args.split not in SPLITS:
        raise DefpertError(f"unknown split {args.split!r}; choose one of: {', '.join(SPLITS)}")
    if args.limit is not None and args.limit < 1:
        raise DefpertError(f"--limit must be at least 1, got {args.limit}")
    return config


def _say_about_precision(config: Any, device: Any) -> None:
    from defpert.runtime.devices import native_bf16

    if config.precision == "bf16" and not native_bf16(device):
        say(f"note: {device} has no native bfloat16 here; bf16 will be slower than fp32")


def _model_for(
    args: argparse.Namespace, spec: Any, data_dir: Any, device: Any
) -> tuple[Any, Any, Any]:
    """The checkpoint (the default model, trained on first use, where none is named), its
    model and card; an output directory made for a run that never started is removed."""
    from defpert.models.checkpoint import load_checkpoint
    from defpert.runtime.rundir import ensure_dir
    from defpert.train import default_checkpoint

    created = not Path(args.out).exists()
    ensure_dir(args.out)  # fail before any training if the output cannot be written
    try:
        checkpoint = args.checkpoint or default_checkpoint(
            spec.name, data_dir=data_dir, device=device, progress=args.progress, report=say
        )
        model, card = load_checkpoint(
            checkpoint,
            expect_input_shape=spec.input_shape,
            expect_dataset=spec.name,
            map_location=device,
        )
    except DefpertError:
        if created and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()  # leave nothing behind for a run that never started
        raise
    return checkpoint, model, card


def _run_splits(args: argparse.Namespace, spec: Any, config: Any, model: Any, checkpoint: Any,
                data_dir: Any, device: Any, out: Path) -> None:  # fmt: skip
    """The study on the asked split (printed), then the other splits' data versions only
    (``--save-splits``: no strong or adaptive attack on them)."""
    from defpert.data.datasets import load_split
    from defpert.study.dp import DPConfig, format_table, run_dp

    splits = [args.split] + (
        [s for s in ("train", "val") if s != args.split] if args.save_splits else []
    )
    for i, split_name in enumerate(splits):
        data = load_split(spec.name, split_name, data_dir, progress=args.progress, report=say)
        if i == 0 and args.limit is not None and args.limit > len(data):
            say(f"warning: --limit {args.limit} is above the {split_name} split's "
                f"{len(data):,} images; using all {len(data):,}")  # fmt: skip
        data = data.head(args.limit)
        if i == 0:  # once the inputs are known to be good
            say(f"model: {checkpoint}; results: {out}")
            long = long_run(model, data.images, config, device)
            if long:
                say(f"warning: {long}")
        cfg = (
            config if i == 0 else DPConfig(**{**vars(config), "strong": False, "adaptive_limit": 0})
        )
        results = run_dp(model, data, cfg, out=out, split_name=split_name,
                         progress=args.progress, report=say, lend_from=args.lend_from)  # fmt: skip
        if i == 0:
            if args.json:
                payload: Any = results[0] if len(results) == 1 else results
                print(json.dumps(payload, indent=2))
            else:
                print(format_table(results))
                print(f"\nsaved data versions, metrics.json and config.json under {out}")
