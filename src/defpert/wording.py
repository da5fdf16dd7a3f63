"""Small helpers for what defpert prints: counts, percentages, aligned tables."""

from __future__ import annotations


def count(n: float, noun: str) -> str:
    """``count(1, "epoch") == "1 epoch"``, ``count(3, "epoch") == "3 epochs"``."""
    return f"{n:g} {noun}" if n == 1 else f"{n:g} {noun}s"


def percent(value: object) -> str:
    """An accuracy as ``"93.5%"``; a dash for a missing number or NaN."""
    return f"{value:.1%}" if isinstance(value, float) and value == value else "–"


def aligned(rows: list[list[str]], left: int = 1) -> str:
    """Rows of cells as plain text: the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < left else c.rjust(w)
                  for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    )  # fmt: skip
