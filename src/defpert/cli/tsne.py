"""``defpert tsne``: t-SNE of the data versions that ``defpert dp`` saved, or of any ``.npz``.

defpert tsne --run runs/dp --versions original,adversarial,defensive --space features
defpert tsne --npz my_data.npz --out tsne.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from defpert.errors import DefpertError
from defpert.study.layout import VERSIONS, RunLayout

# The versions a t-SNE can show (the strong suite's and undo's points are on a subset).
TSNE_VERSIONS = ("original", "adversarial", "defensive", "defensive-attacked",
                 "defended-adversarial")  # fmt: skip


def add_tsne_parser(sub: Any) -> None:
    from defpert.cli.common import add_common

    p = sub.add_parser("tsne", help="t-SNE plot of data versions (RQ2)")
    p.set_defaults(handler="defpert.cli.tsne:run_tsne_command")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a run directory written by `defpert dp`")
    src.add_argument(
        "--npz", help="any .npz file with arrays `images` (or `x`) and `labels` (or `y`)"
    )
    p.add_argument("--versions", default="original,adversarial,defensive",
                   help=f"comma-separated: {', '.join(TSNE_VERSIONS)}")  # fmt: skip
    p.add_argument("--defense", help="which defense's versions (default: the first saved)")
    p.add_argument("--split", default="test")
    p.add_argument("--space", default="pixels", help="pixels or features (penultimate layer)")
    p.add_argument("--checkpoint", help="model for --space features (default: the run's)")
    p.add_argument("--per-class", type=int, default=100, help="points per class and version")
    p.add_argument("--layout", default="panels", help="panels or markers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="figure path (default: RUN/figures/tsne-<space>.png or FILE.png)")
    add_common(p)


def _run_versions(run: Path, names: list[str], defense: str | None, split: str) -> dict[str, Any]:
    from defpert.data.datasets import SPLITS
    from defpert.defenses import registry

    # names become paths: only known ones, so nothing outside the run directory is read
    if split not in SPLITS:
        raise DefpertError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if defense is not None:
        registry.get(defense)  # an unknown name is refused in one line
    layout = RunLayout(run, split)
    base = layout.versions
    if not base.is_dir():
        raise DefpertError(
            f"{run} holds no saved versions for split {split!r} (run `defpert dp --out {run}`)"
        )
    if defense is None:
        saved = sorted(d.name for d in base.iterdir() if (d / "defensive.npz").is_file())
        defense = saved[0] if saved else registry.ORIGINAL
    from defpert.study.store import load_npz

    out = {}
    for name in names:
        if name not in TSNE_VERSIONS:
            raise DefpertError(f"unknown version {name!r}; choose from: {', '.join(TSNE_VERSIONS)}")
        path = layout.version(name, defense)
        if not path.is_file():  # most often a dp run that was stopped before it saved this one
            raise DefpertError(
                f"{run} has no {name!r} version yet ({path} is missing): finish its "
                f"`defpert dp` run first (rerunning that command continues it)"
            )
        out[name if "{defense}" not in VERSIONS[name] else f"{name} ({defense})"] = load_npz(path)
    return out


def run_tsne_command(args: argparse.Namespace) -> int:
    from defpert.models.checkpoint import load_checkpoint
    from defpert.report.tsne import draw_tsne
    from defpert.runtime.rundir import read_json, write_atomic
    from defpert.study.store import load_npz

    if args.per_class is not None and args.per_class < 1:
        raise DefpertError(f"--per-class must be at least 1, got {args.per_class}")
    names = [v.strip() for v in args.versions.split(",") if v.strip()]
    if args.run:
        run = Path(args.run)
        versions = _run_versions(run, names, args.defense, args.split)
        default_out = run / "figures" / f"tsne-{args.space}.png"
    else:
        versions = {Path(args.npz).stem: load_npz(args.npz)}
        default_out = Path(args.npz).with_suffix(".png")
    for name, (x, _) in versions.items():
        if len(x) == 0:
            raise DefpertError(f"{name} holds no examples: nothing to embed")
    model = None
    if args.space == "features":
        checkpoint = args.checkpoint
        if checkpoint is None and args.run:
            checkpoint = read_json(Path(args.run) / "config.json").get("checkpoint")
        if checkpoint is None:
            raise DefpertError("--space features needs --checkpoint")
        model, _ = load_checkpoint(checkpoint)
    fig = draw_tsne(versions, space=args.space, model=model, seed=args.seed,
                    per_class=args.per_class, layout=args.layout)  # fmt: skip
    out = Path(args.out) if args.out else default_out
    write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=130, format=out.suffix.lstrip(".") or "png"))
    print(f"t-SNE of {', '.join(versions)} ({args.space}) saved to {out}", file=sys.stderr)
    print(str(out))
    return 0
