"""Small helpers for what defpert prints: counts, percentages, aligned tables."""

from __future__ import annotations


def count(n: float, noun: str) -> str:
    """``count(1, "epoch") == "1 epoch"``, ``count(3, "epoch") == "3 epochs"``."""
    return f"{n:g} {noun}" if n == 1 else f"{n:g} {noun}s"


def percent(value: object) -> str:
    """An accuracy as ``"93.5%"``; a dash for a missing number or NaN."""
    return f"{value:.1%}" if isinstance(value, float) and value == value else "–"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion ``k / n`` (good at 0 % and 100 %)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def with_interval(accuracy: float, n: int) -> str:
    """An accuracy on ``n`` examples as ``"93.5% [91.8, 94.9]"`` (its 95 % Wilson interval)."""
    if not (isinstance(accuracy, float) and accuracy == accuracy) or n <= 0:
        return "–"
    low, high = wilson(round(accuracy * n), n)
    return f"{accuracy:.1%} [{100 * low:.1f}, {100 * high:.1f}]"


def aligned(rows: list[list[str]], left: int = 1) -> str:
    """Rows of cells as plain text: the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < left else c.rjust(w)
                  for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    )  # fmt: skip
