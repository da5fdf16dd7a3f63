"""Small helpers for the words defpert prints: counts with the right plural."""

from __future__ import annotations


def count(n: float, noun: str) -> str:
    """``count(1, "epoch") == "1 epoch"``, ``count(3, "epoch") == "3 epochs"``."""
    return f"{n:g} {noun}" if n == 1 else f"{n:g} {noun}s"
