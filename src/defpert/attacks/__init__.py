"""Attacks on defpert's engine: the weak PGD of the original study, the strong suite
(APGD, FAB, Square, PGD in a cascade, in tiers) and the adaptive attack through a test-time
defense.

>>> x_adv = pgd(model, x, y, threat=LinfBall(0.2), steps=20, step_size=0.01)
>>> result = strong_attack(model, x, y, threat=LinfBall(0.3), config=StrongConfig("standard"))
"""

from defpert.attacks.apgd import apgd
from defpert.attacks.fab import fab
from defpert.attacks.pgd import pgd
from defpert.attacks.square import square
from defpert.attacks.strong import TIERS, StrongConfig, StrongResult, check_tier, strong_attack

__all__ = [
    "TIERS",
    "StrongConfig",
    "StrongResult",
    "apgd",
    "check_tier",
    "fab",
    "pgd",
    "square",
    "strong_attack",
]
