"""Helpers shared by the ``defpert`` subcommands: the parser, messages, common flags."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def say(message: str) -> None:
    print(message, file=sys.stderr)


def progress_default() -> bool:
    return sys.stderr.isatty()


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", help="dataset directory (default: $DEFPERT_DATA or the user cache)"
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )  # fmt: skip
    p.add_argument(
        "--threads", type=int,
        help="CPU threads (default: the cores other programs leave free, looked at again "
             "every 30 s; $DEFPERT_THREADS or $OMP_NUM_THREADS also fix it)",
    )  # fmt: skip


def dataset_path(data_dir: str, dataset: str) -> str:
    """``--data-dir`` names the root; each dataset lives in its own sub-directory."""
    from defpert.data.datasets import get_spec

    return f"{data_dir}/{get_spec(dataset).name}"
