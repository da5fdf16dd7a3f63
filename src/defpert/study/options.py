"""``dp``'s settings, each declared once with its default and help, without PyTorch: the
command line builds its options from these fields (``defpert --help`` stays fast), and
:class:`defpert.study.config.DPConfig` adds what the settings mean."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from defpert.defenses import registry


def _opt(default: Any, help: str, short: str = "") -> Any:
    """A field that is also a command-line option: its default, help and short flag."""
    return field(default=default, metadata={"help": help, "short": short})


@dataclass
class DPOptions:
    """Everything that determines a ``defpert dp`` result, as data."""

    # Each setting once: its default here, its help beside it; ``defpert dp``'s options are
    # made from these fields (``defpert.cli.dp``), so a default is never written twice.
    norm: str = _opt("linf", "threat model: linf or l2", "-p")
    eps: float = _opt(0.2, "radius of the threat model (L-inf radii live in [0, 1])", "-e")
    step_size: float = _opt(0.01, "PGD step size", "-a")
    steps: int = _opt(20, "PGD steps", "-k")
    defenses: tuple[str, ...] = (registry.ORIGINAL,)
    random_start: bool = _opt(False, "start the weak PGD at a random point of the ball")
    strong: bool = True
    strong_tier: str = "standard"  # quick, standard or plus (attacks.strong)
    strong_limit: int = _opt(1000, "examples for the strong attack")
    strong_steps: int = _opt(100, "iterations of the strong suite's PGD, APGD and FAB")
    strong_restarts: int | None = _opt(None, "PGD runs per loss (default: the tier's)")
    square_queries: int | None = _opt(
        None, "queries of the Square attack (default: the tier's; standard: 5000)"
    )
    adaptive_limit: int = _opt(200, "examples for the adaptive attack on reactive defenses")
    adaptive_square_queries: int | None = _opt(
        None, "queries of Square through a reactive defense (default: --square-queries)"
    )
    budget_from: str = _opt(
        "defended",
        "where an attack on a defended point measures its eps from: defended "
        "(man-in-the-middle) or original (within eps of the natural image too)",
    )
    defense_eps: float | None = _opt(None, "defense budget (default: the attack's eps)")
    defense_steps: int | None = _opt(None, "defense steps (default: the attack's)")
    defense_step_size: float | None = _opt(None, "defense step size (default: the attack's)")
    defense_optimizer: str = _opt(
        "steepest", "the defense's step: steepest (sign for L-inf), adam or rmsprop"
    )
    inner_steps: int = _opt(10, "robustify: PGD steps of its inner attack (at the attack's eps)")
    inner_restarts: int = _opt(1, "robustify: random starts of the inner attack, averaged")
    warm_start: bool = _opt(
        False, "robustify: start each inner attack where the previous one ended"
    )
    seed: int = _opt(0, "seed of every random draw (the same seed gives the same numbers)")
    batch_size: int | None = _opt(
        None, "images per chunk of the attack loop (default: measured once per CPU; 2048 on a GPU)"
    )
    precision: str = _opt(
        "fp32",
        "fp32; bf16 (autocast) for the weak attack and the defenses, checked against fp32 on "
        "500 examples; or auto: bf16 only where the device has it natively and the weak "
        "attack agrees with fp32 on 2,000 examples",
    )
    search_precision: str = _opt(
        "fp32",
        "the arithmetic the strong suite and the adaptive attack search in: fp32, bf16, or auto "
        "(bf16 on a CPU that has it natively; fp32 on a GPU, where the small models are "
        "launch-bound and bf16 measured slower); every verdict is the fp32 model's, and what a "
        "bf16 search claimed but did not break gets the fp32 suite",
    )
    extra: dict[str, Any] = field(default_factory=dict)
