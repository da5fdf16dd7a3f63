"""Every defensive perturbation, declared once, without PyTorch (the command line reads it).

A defense is the engine run in the defender's direction; an entry says everything the rest
of defpert needs to know about it: whether it is *proactive* (the data owner perturbs before
release, knowing the true label) or *reactive* (part of the model at test time, applied to
every input, label-free), which objective it optimises and in which direction, whether it
reads the true label, and whether the loss is taken at an inner attack's point (Moon et
al.'s robustification). ``dp --defense``, :class:`~defpert.defenses.Defense`, the study,
the report and the adaptive attack (for every reactive entry) all read this table.

Adding a defense is one :func:`register` call (or one entry below) and its test::

    register(DefenseSpec("entropy", reactive=True, objective="entropy", ascend=False,
                         uses_label=False, summary="descend the prediction's entropy"))

(the objective named must exist in :data:`defpert.core.objectives.OBJECTIVES`).
"""

from __future__ import annotations

from dataclasses import dataclass

from defpert.errors import DefpertError


@dataclass(frozen=True)
class DefenseSpec:
    """What a defensive perturbation is (its budget is the user's: see ``Defense``)."""

    name: str
    reactive: bool  # part of the model at test time (so attacked *through*: adaptive attack)
    objective: str  # a name of defpert.core.objectives.OBJECTIVES
    ascend: bool  # False: descend the objective (move deeper into the class); True: ascend it
    uses_label: bool  # reads the true label (False: the model's own prediction stands in)
    inner_attack: bool = False  # the loss at an inner PGD attack's point (robustification)
    summary: str = ""  # one line, for the command line's help and the README's table

    def __post_init__(self) -> None:
        if self.reactive and self.uses_label:
            raise DefpertError(f"defense {self.name!r}: a reactive defense cannot read labels")


REGISTRY: dict[str, DefenseSpec] = {}


def register(spec: DefenseSpec) -> DefenseSpec:
    """Add a defense to the registry (a name already taken is refused)."""
    if spec.name in REGISTRY:
        raise DefpertError(f"a defense named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a defense added by :func:`register` (for tests and experiments)."""
    REGISTRY.pop(name, None)


def get(name: str) -> DefenseSpec:
    """The registered defense ``name``; an unknown name is refused in one line."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DefpertError(
            f"unknown defense {name!r}; choose one of: {', '.join(names())}"
        ) from None


def names(*, reactive: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order (only reactive or proactive ones if asked)."""
    return tuple(n for n, s in REGISTRY.items() if reactive is None or s.reactive == reactive)


for _spec in (
    DefenseSpec("ce", reactive=False, objective="ce", ascend=False, uses_label=True,
                summary="descend cross-entropy to the true label (the original study's method)"),
    DefenseSpec("margin", reactive=False, objective="margin", ascend=False, uses_label=True,
                summary="descend the CW logit margin (does not saturate on confident inputs)"),
    DefenseSpec("robustify", reactive=False, objective="ce", ascend=False, uses_label=True,
                inner_attack=True,
                summary="descend the worst-case loss within the attacker's ball (Moon et al., 2022)"),
    DefenseSpec("robustify-label-free", reactive=False, objective="ce", ascend=False,
                uses_label=False, inner_attack=True,
                summary="robustify with the model's prediction in place of the label"),
    DefenseSpec("anti-adversary", reactive=True, objective="ce", ascend=False, uses_label=False,
                summary="descend cross-entropy to the model's own prediction"),
    DefenseSpec("hedge", reactive=True, objective="hedge", ascend=True, uses_label=False,
                summary="ascend the summed cross-entropy over all classes (Wu et al., 2021)"),
):  # fmt: skip
    register(_spec)

# The original study's method: what the sweeps and figures show, and ``dp``'s default.
ORIGINAL = "ce"

# The names as they stood at import (kept for callers of the earlier constants; code that must
# see defenses registered later calls names()).
DEFENSES = names()
PROACTIVE = names(reactive=False)
REACTIVE = names(reactive=True)
ROBUSTIFY = tuple(n for n, s in REGISTRY.items() if s.inner_attack)
LABEL_FREE = tuple(n for n, s in REGISTRY.items() if not s.uses_label)
