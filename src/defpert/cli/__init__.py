"""The ``defpert`` command.

    defpert data fetch mnist
    defpert train --dataset mnist --model cnn --epochs 3 --out runs/cnn
    defpert dp -p linf -k 20 -e 0.2 -a 0.01

Errors in the user's input print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from defpert.cli.common import Parser, add_common, dataset_path, progress_default, say
from defpert.errors import DefpertError

RESUMABLE = {"train", "dp", "sweep", "reproduce"}  # commands that save as they go
# Commands that only read files: no process group, no threads, so no wait for PyTorch to load.
LISTINGS = {"models"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="defpert", description="Defensive perturbations for image classifiers.")
    from defpert import __version__

    parser.add_argument("--version", action="version", version=f"defpert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    data = sub.add_parser("data", help="manage datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    fetch = data_sub.add_parser("fetch", help="fetch and verify a dataset's IDX files")
    fetch.add_argument("dataset", help="mnist or fashion-mnist (digits needs no fetch)")
    fetch.add_argument(
        "--from", dest="source", metavar="DIR", help="a directory holding the IDX files"
    )
    add_common(fetch)
    fetch.set_defaults(handler="defpert.cli:_cmd_fetch")

    models = sub.add_parser("models", help="list the robust checkpoints shipped with defpert")
    models.add_argument("--verify", action="store_true", help="also check each one's SHA-256")
    models.set_defaults(handler="defpert.cli:_cmd_models")

    tr = sub.add_parser("train", help="train a classifier and report its test accuracy")
    tr.add_argument("--dataset", default="mnist")
    tr.add_argument(
        "--model",
        default="cnn",
        help="cnn, madry (Madry et al.'s MNIST challenge network), lenet or mlp",
    )
    tr.add_argument("--epochs", type=int, help="default: 3; 10 with --adversarial")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--batch-size", type=int, help="default: 64; 100 with --adversarial")
    tr.add_argument("--lr", type=float, help="Adam's (peak) learning rate (default: 2e-3; 5e-3 with --adversarial)")  # fmt: skip
    tr.add_argument("--lr-schedule",
                    help="cosine (decay to 0; the default) or cyclic (0 -> lr at half-way -> 0, "
                         "Wong et al.; the default with --adversarial)")  # fmt: skip
    tr.add_argument("--limit", type=int, help="train on the first N training images only")
    tr.add_argument(
        "--adversarial",
        default="none",
        help="adversarial training: none, pgd (Madry et al.), trades (Zhang et al.), "
        "fgsm-rs (Wong et al.) or preempt (Moon et al.'s robust-to-robustification training: "
        "PGD from a one-step defensive point within --defense-eps)",
    )
    tr.add_argument("--defense-eps", type=float,
                    help="preempt: the defender's budget (default: --adv-eps)")  # fmt: skip
    tr.add_argument("--trades-beta", type=float, default=6.0,
                    help="trades: weight of the KL robustness term (default: 6)")  # fmt: skip
    tr.add_argument("--adv-norm", default="linf", help="threat model trained against: linf or l2")
    tr.add_argument(
        "--adv-eps",
        type=float,
        help="its radius (default: 0.3 for MNIST and the digits, 0.1 for Fashion-MNIST)",
    )
    tr.add_argument("--adv-steps", type=int, default=40, help="PGD steps in each training batch")
    tr.add_argument("--adv-step-size", type=float, default=0.01, help="their step size")  # fmt: skip
    tr.add_argument("--adv-warmup", type=float,
                    help="epochs over which the training radius grows from 0 to --adv-eps "
                         "(default: a fifth of the epochs)")  # fmt: skip
    tr.add_argument("--precision", default="fp32",
                    help="fp32, or bf16: each batch's forward and backward passes under bfloat16 "
                         "autocast, the weights and the optimiser in fp32 (default: fp32)")  # fmt: skip
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    tr.add_argument("--out", default="runs/train", help="run directory (created as needed)")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace a model of another config in --out (default: refuse)")  # fmt: skip
    add_common(tr)
    tr.set_defaults(handler="defpert.cli:_cmd_train")

    from defpert.cli.dp import add_dp_parser
    from defpert.cli.study import add_study_parsers
    from defpert.cli.tsne import add_tsne_parser

    add_dp_parser(sub)
    add_tsne_parser(sub)
    add_study_parsers(sub)
    return parser


def _cmd_fetch(args: argparse.Namespace) -> int:
    from defpert.data.datasets import fetch

    fetch(args.dataset, args.data_dir and dataset_path(args.data_dir, args.dataset),
          source=args.source, progress=args.progress, report=say)  # fmt: skip
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from defpert.models.shipped import PREFIX, index, verified
    from defpert.wording import aligned

    records = index()
    if not records:
        print("no checkpoints are shipped with this installation")
        return 0
    rows = [["name", "trained", "clean (n)", "PGD-40 (n)", "strong suite (n)"]]
    for name, r in sorted(records.items()):
        if args.verify:
            verified(name)
        acc, part = r.get("accuracy", {}), r.get("slice", {})
        threat, robust = "–", "–"
        if part:  # the training radius, from the natural image
            threat = f"{part['norm']} {part['eps']:g}"
            robust = f"{part['pgd40']:.1%} ({part['n']:,})"
        strong = acc.get("robust")  # tools/ship_checkpoint.py --strong: "<tier> suite, <threat>"
        worst = f"{strong['accuracy']:.1%} ({strong['n']:,})" if strong else "–"
        test = acc.get("test")
        kind = str(r["training"]).removeprefix("adversarial-")
        rows.append([name, f"{kind} {threat}",
                     f"{test:.1%} ({acc.get('n_test', 0):,})" if test is not None else "–",
                     robust, worst])  # fmt: skip
    print(aligned(rows, left=2))
    print(f"Load one as --checkpoint {PREFIX}NAME. clean: on the test set. PGD-40 and the strong\n"
          "suite (standard tier): at the training radius, from the natural image, on the first\n"
          "test images.")  # fmt: skip
    if args.verify:
        print("every SHA-256 matches")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from defpert.train import TrainConfig, recipe, train
    from defpert.wording import count

    config = TrainConfig(
        dataset=args.dataset, model=args.model, seed=args.seed,
        limit=args.limit, adversarial=args.adversarial, adv_norm=args.adv_norm,
        adv_eps=args.adv_eps, adv_steps=args.adv_steps, adv_step_size=args.adv_step_size,
        trades_beta=args.trades_beta, defense_eps=args.defense_eps, precision=args.precision,
        **recipe(args.adversarial, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 lr_schedule=args.lr_schedule, adv_warmup=args.adv_warmup),
    )  # fmt: skip
    from defpert.data.datasets import get_spec
    from defpert.models.zoo import build_model

    get_spec(config.dataset)  # unknown names fail before any work
    build_model(config.model)
    config.validate()
    data_dir = args.data_dir and dataset_path(args.data_dir, args.dataset)
    adversarially = (f", adversarially ({config.adversarial}, {config.adv_norm})"
                     if config.adversarial != "none" else "")  # fmt: skip
    if args.progress:  # on a terminal: the data and the first batch take a while
        say(f"training {config.model} on {config.dataset} for {count(config.epochs, 'epoch')}"
            f"{adversarially} into {args.out}")  # fmt: skip
    result = train(config, out=args.out, data_dir=data_dir, device=args.device,
                   progress=args.progress, overwrite=args.overwrite)  # fmt: skip
    m = result.metrics
    print(
        f"{config.dataset} {config.model}: test accuracy {m['test_accuracy']:.4f} "
        f"(val {m['val_accuracy']:.4f}, {count(config.epochs, 'epoch')}, "
        f"{m['train_images_per_second']:.0f} images/s on {m['device']}); saved to {args.out}"
    )
    return 0


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    unknown: list[str]) -> None:  # fmt: skip
    """One line for an option the command lacks: the nearest it has, and where all are."""
    import difflib

    command = getattr(args, "command", "")
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    own = sub.choices.get(command) if sub is not None else None
    options = [o for a in (own or parser)._actions for o in a.option_strings]
    first = unknown[0].split("=", 1)[0]
    near = difflib.get_close_matches(first, options, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else ""
    where = f"defpert {command} --help" if own is not None else "defpert --help"
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint} ({where} lists the options)")


def handler(where: str) -> Callable[[argparse.Namespace], int]:
    """The function a command's parser names (``set_defaults(handler="module:function")``),
    imported only when that command runs: ``defpert --help`` and ``defpert models`` start
    without loading PyTorch."""
    module, name = where.split(":")
    found: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            _refuse_unknown(parser, args, unknown)
    except SystemExit as exc:  # usage errors (status 2), --help and --version (status 0)
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "progress", None) is None:
        args.progress = progress_default()
    computes = args.command not in LISTINGS
    if computes:
        from defpert.runtime import distributed

        try:
            distributed.init()  # under torchrun: join the process group
        except (RuntimeError, ValueError) as exc:
            print(f"defpert: error: cannot join the torchrun process group: {exc}", file=sys.stderr)
            return 2
        if not distributed.is_main():  # rank 0 alone speaks
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
            args.progress = False
    try:
        status = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit, where it would print a traceback
        return status
    except BrokenPipeError:  # the reader stopped early (`defpert models | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a program ended by SIGPIPE
    finally:
        if computes:
            from defpert.runtime import distributed

            distributed.shutdown()


def _dispatch(args: argparse.Namespace) -> int:
    try:
        for name in ("checkpoint", "out", "data_dir", "lend_from", "run"):
            if getattr(args, name, None) == "":  # not "the default": the user wrote something
                flag = "--" + name.replace("_", "-")
                raise DefpertError(
                    f"{flag} is empty; give a path (or leave {flag} out for its default)"
                )
        if args.command not in LISTINGS:
            from defpert.runtime import threads

            threads.configure(getattr(args, "threads", None))
        return handler(args.handler)(args)
    except DefpertError as exc:
        print(f"defpert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in RESUMABLE
        print("defpert: interrupted" + ("; run the same command again: what it finished is kept "
              "and reused" if resumable else ""), file=sys.stderr)  # fmt: skip
        return 130
