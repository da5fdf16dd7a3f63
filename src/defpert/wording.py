"""Small helpers for what defpert prints: counts, percentages, aligned tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class PairedDifference:
    """Two accuracies on the same examples (first minus second), from the counts of
    examples right under both, under the first only, the second only, and neither."""

    both: int
    only_first: int
    only_second: int
    neither: int

    @classmethod
    def of(cls, first: Sequence[bool], second: Sequence[bool]) -> PairedDifference:
        """From two per-example verdicts (True: robust) on the same examples, in order."""
        if len(first) != len(second):
            raise ValueError(f"verdicts on {len(first)} and {len(second)} examples")
        pairs = [(bool(f), bool(s)) for f, s in zip(first, second, strict=True)]
        return cls(pairs.count((True, True)), pairs.count((True, False)),
                   pairs.count((False, True)), pairs.count((False, False)))  # fmt: skip

    @property
    def n(self) -> int:
        return self.both + self.only_first + self.only_second + self.neither

    @property
    def difference(self) -> float:
        return (self.only_first - self.only_second) / self.n if self.n else float("nan")

    def interval95(self, z: float = 1.96) -> tuple[float, float]:
        """Newcombe's (1998) square-and-add interval for paired proportions (his method 10):
        each accuracy's Wilson interval, combined with their estimated correlation, so that
        a gain on examples the two share is judged by the examples on which they differ."""
        n = self.n
        if n <= 0:
            return (float("nan"), float("nan"))
        right_first, right_second = self.both + self.only_first, self.both + self.only_second
        p1, p2 = right_first / n, right_second / n
        l1, u1 = wilson(right_first, n, z)
        l2, u2 = wilson(right_second, n, z)
        margins = right_first * (n - right_first) * right_second * (n - right_second)
        cross = self.both * self.neither - self.only_first * self.only_second
        psi = 0.0  # the correlation of the two accuracies, shrunk towards 0 as Newcombe does
        if margins > 0 and cross > n / 2:
            psi = (cross - n / 2) / margins**0.5
        elif margins > 0 and cross < 0:
            psi = cross / margins**0.5
        d = p1 - p2
        low = d - ((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2)) ** 0.5
        high = d + ((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1)) ** 0.5
        return (max(-1.0, low), min(1.0, high))

    def as_json(self) -> dict[str, Any]:
        return {"both": self.both, "only_first": self.only_first,
                "only_second": self.only_second, "neither": self.neither, "n": self.n,
                "difference": self.difference, "interval95": list(self.interval95())}  # fmt: skip


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
