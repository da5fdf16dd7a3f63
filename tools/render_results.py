"""Render the results pages of docs/results/ from the JSON that holds each measurement.

No number in these pages is typed by hand: each table is made here from
``experiments/results/*.json``, and ``tests/test_docs.py`` fails when a page differs from
what this script renders (rerun it after adding a result).

    python tools/render_results.py           # rewrite the pages
    python tools/render_results.py --check   # exit 1 if a page is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _interval(bounds: list[float]) -> str:
    return f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def adaptive() -> str:
    """docs/results/adaptive.md: the adaptive attack through reactive defenses."""
    lines = [
        "# The adaptive attack through a reactive defense, against an independent transfer",
        "",
        "<!-- rendered by tools/render_results.py from experiments/results/adaptive-*.json -->",
        "",
        "A reactive defense (`hedge`, `anti-adversary`) runs on every input at test time, so it",
        "is judged by attacks *through* it. The peer below is independent of defpert's attacks:",
        "torchattacks' PGD-100 (random start), APGD-CE and APGD-DLR on the bare model, each",
        "final point passed through defpert's defense and judged there, the worst case per",
        "example. defpert's adaptive accuracy should never be above the peer's by more than",
        "0.5 points. Accuracies with their 95 % Wilson intervals; the same examples on both",
        "sides; every budget measured from the natural image.",
        "",
        "## The case that found the gap (first 200 MNIST test images, L-inf 0.2)",
        "",
        "| code | defense | n | defpert adaptive | peer transfer | defpert minus peer |",
        "|---|---|---|---|---|---|",
    ]
    for tag in ("before", "after"):
        d = _load(f"adaptive-issue41-{tag}-hedge-cnn-e1-linf0.2-n200.json")
        for r in d["rows"]:
            ours, peer = r["defpert_adaptive"], r["peer_transfer"]
            label = "without deep candidates" if tag == "before" else "with deep candidates"
            lines.append(
                f"| {d['code']} ({label}) | `{r['defense']}` | {r['n']} | "
                f"{_pct(ours['accuracy'])} {_interval(ours['interval95'])} | "
                f"{_pct(peer['accuracy'])} {_interval(peer['interval95'])} | "
                f"{r['defpert_minus_peer_points']:+.1f} points |"
            )
    depth = _load("adaptive-depth-hedge-cnn-e1-linf0.2-n200.json")
    lines += [
        "",
        "Why: the strong suite keeps, per example, the first point across the boundary, the",
        "right verdict on the bare model and the wrong candidate for a defense that moves",
        "points back a little. Points broken through `hedge` by each kind of candidate alone",
        f"(n = {depth['n']}, `experiments/adaptive_depth.py`):",
        "",
        "| candidate (bare model) | breaks the bare model | breaks it through `hedge` |",
        "|---|---|---|",
    ]
    for name, through in depth["broken_through_defense"].items():
        lines.append(f"| {name} | {depth['broken_on_bare_model'][name]} | {through} |")
    lines += [
        "",
        "## The cross-check grid (first 500 MNIST test images)",
        "",
        "| model | threat model | defense | n | defpert adaptive | peer transfer | defpert minus peer | adaptive seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("adaptive-crosscheck-*.json")):
        d = json.loads(path.read_text())
        for r in d["rows"]:
            ours, peer, t = r["defpert_adaptive"], r["peer_transfer"], r["threat"]
            lines.append(
                f"| {d['checkpoint']} | {t['norm']} {t['eps']:g} | `{r['defense']}` | {r['n']} | "
                f"{_pct(ours['accuracy'])} {_interval(ours['interval95'])} | "
                f"{_pct(peer['accuracy'])} {_interval(peer['interval95'])} | "
                f"{r['defpert_minus_peer_points']:+.1f} points | {sum(ours['seconds'].values()):,.0f} |"
            )
    lines += ["", "Commands, code and machine: each JSON's `command`, `code` and `machine`.", ""]
    return "\n".join(lines)


PAGES: dict[str, Callable[[], str]] = {"docs/results/adaptive.md": adaptive}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a page is out of date")
    a = p.parse_args()
    stale = []
    for rel, render in PAGES.items():
        path, text = ROOT / rel, render()
        if a.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run python tools/render_results.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
