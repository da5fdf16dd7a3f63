"""A study's results as typed records, each number under the name a reader would guess.

``dp`` writes one JSON object per defense (``dp --json``, ``metrics.json``, the result store,
and every file under ``experiments/results``); its keys stay as they are so that every saved
result stays readable. This module is the one place that knows them. Everything that
reads a result (the ``dp`` table, the report, the sweeps, ``reproduce``) goes through
:class:`DefenseResult`, whose names say what each number is:

============================================  ==========================================
:class:`DefenseResult`                         the JSON's key
============================================  ==========================================
``bare.clean``                                 ``accuracy.original``
``bare.weak``                                  ``accuracy.original_attacked``
``bare.weak_on_strong_examples``               ``strong.weak_on_same_examples.original_attacked``
``bare.strong``                                ``accuracy.original_attacked_strong``
``defended.clean``                             ``accuracy.defensive``
``defended.weak``                              ``accuracy.defensive_attacked``
``defended.weak_on_strong_examples``           ``strong.weak_on_same_examples.defensive_attacked``
``defended.strong``                            ``accuracy.defensive_attacked_strong``
``undo_then_attack``                           ``accuracy.defensive_undo_attacked``
``weak_points_through_defense``                ``accuracy.defended_adversarial``
``adaptive``                                   ``accuracy.adaptive``
``bare_strong_on_adaptive_examples``           ``accuracy.bare_strong_adaptive_examples``
============================================  ==========================================

Every accuracy is a :class:`Measured`: the accuracy with the number of examples it was
measured on, so its 95 % interval is always at hand. ``DefenseResult.from_json(d).to_json()``
gives ``d`` back, key for key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from defpert.wording import wilson, with_interval

__all__ = ["Attacked", "BudgetRow", "DefenseResult", "Measured", "SweepRow", "Threat"]


@dataclass(frozen=True)
class Measured:
    """An accuracy and the number of examples it was measured on."""

    accuracy: float
    n: int

    @property
    def interval95(self) -> tuple[float, float]:
        """Its 95 % Wilson interval."""
        return wilson(round(self.accuracy * self.n), self.n)

    def __str__(self) -> str:
        return with_interval(self.accuracy, self.n)


def _measured(value: Any, n: Any) -> Measured | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not isinstance(n, int):
        return None
    return Measured(float(value), n)


@dataclass(frozen=True)
class Attacked:
    """One model's accuracy on the study's examples: clean, under the original's weak
    attack (on all of them, and on the strong suite's first examples), and under the strong
    suite, worst case per example. For a reactive defense the defended side has its clean
    accuracy only: its attacks are :attr:`DefenseResult.adaptive` and
    :attr:`DefenseResult.weak_points_through_defense`."""

    clean: Measured
    weak: Measured | None = None
    weak_on_strong_examples: Measured | None = None
    strong: Measured | None = None


@dataclass(frozen=True)
class Threat:
    """The weak attack's threat model and settings, and where an attack on a defended point
    measures its budget from (``defended``: that point; ``original``: the natural image too)."""

    norm: str
    eps: float
    step_size: float
    steps: int
    random_start: bool = False
    budget_from: str = "defended"

    def title(self) -> str:
        """``"L-inf PGD, eps=0.2, 20 steps of 0.01"``."""
        norm = self.norm.upper().replace("LINF", "L-inf")
        return f"{norm} PGD, eps={self.eps}, {self.steps} steps of {self.step_size}"


@dataclass(frozen=True)
class DefenseResult:
    """One defense's numbers beside the bare model's, on the same examples."""

    defense: str
    reactive: bool
    dataset: str
    split: str
    threat: Threat
    bare: Attacked
    defended: Attacked
    undo_then_attack: Measured | None = None  # robustify: Moon et al.'s undo, then attack
    weak_points_through_defense: Measured | None = None  # reactive: the weak attack's points
    adaptive: Measured | None = None  # reactive: the adaptive attack through the defense
    bare_strong_on_adaptive_examples: Measured | None = None
    # everything else the run recorded (budgets, costs, timings, what broke each example)
    record: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        """The examples of the clean and weak-attack numbers."""
        return self.bare.clean.n

    @property
    def kind(self) -> str:
        return "reactive" if self.reactive else "proactive"

    @property
    def decisive(self) -> Measured | None:
        """The number to trust: the adaptive attack through a reactive defense, the strong
        suite on a proactive one's points."""
        return self.adaptive if self.reactive else self.defended.strong

    @property
    def bare_on_decisive_examples(self) -> Measured | None:
        """The bare model's strong accuracy on the examples of :attr:`decisive`."""
        return self.bare_strong_on_adaptive_examples if self.reactive else self.bare.strong

    @property
    def paired(self) -> Mapping[str, Any] | None:
        """:attr:`decisive` against the bare model on the same examples (the counts of
        examples robust under each, the difference and its paired 95 % interval), or None
        for a result saved without per-example verdicts."""
        part = self.record.get("adaptive" if self.reactive else "strong", {})
        paired = part.get("paired") if isinstance(part, Mapping) else None
        return paired if isinstance(paired, Mapping) else None

    @property
    def defense_budget(self) -> Mapping[str, Any]:
        """What the defense may change and spend (eps, steps, step size, inner attack)."""
        return self.record.get("defense_budget", {})

    @property
    def passes(self) -> Mapping[str, Any]:
        """Each piece's cost in passes of the classifier per example."""
        return self.record.get("passes", {})

    @property
    def strong_suite(self) -> Mapping[str, Any]:
        """The strong suite's tier and attacks ({} without a strong suite)."""
        return self.record.get("strong", {}).get("suite", {})

    @property
    def adaptive_config(self) -> Mapping[str, Any]:
        return self.record.get("adaptive", {}).get("config", {})

    # -- the JSON form ------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DefenseResult:
        """The typed record of one ``dp --json`` object."""
        a = data["accuracy"]
        n = int(data["n"])
        strong = data.get("strong") or {}
        adaptive = data.get("adaptive") or {}
        n_strong, n_adaptive = strong.get("n"), adaptive.get("n")
        same = strong.get("weak_on_same_examples", {})
        t = data["threat"]
        return cls(
            defense=data["defense"],
            reactive=data["defense_kind"] == "reactive",
            dataset=data["dataset"],
            split=data["split"],
            threat=Threat(
                t["norm"],
                t["eps"],
                t["step_size"],
                t["steps"],
                t.get("random_start", False),
                t.get("budget_from", "defended"),
            ),  # fmt: skip
            bare=Attacked(
                clean=Measured(float(a["original"]), n),
                weak=_measured(a.get("original_attacked"), n),
                weak_on_strong_examples=_measured(same.get("original_attacked"), n_strong),
                strong=_measured(a.get("original_attacked_strong"), n_strong),
            ),
            defended=Attacked(
                clean=Measured(float(a["defensive"]), n),
                weak=_measured(a.get("defensive_attacked"), n),
                weak_on_strong_examples=_measured(same.get("defensive_attacked"), n_strong),
                strong=_measured(a.get("defensive_attacked_strong"), n_strong),
            ),
            undo_then_attack=_measured(a.get("defensive_undo_attacked"), n_strong),
            weak_points_through_defense=_measured(a.get("defended_adversarial"), n),
            adaptive=_measured(a.get("adaptive"), n_adaptive),
            bare_strong_on_adaptive_examples=_measured(
                a.get("bare_strong_adaptive_examples"), n_adaptive
            ),
            record=copy.deepcopy(dict(data)),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``dp --json`` object: the record, its numbers written from the typed fields."""
        out = copy.deepcopy(dict(self.record))
        out.update(defense=self.defense, dataset=self.dataset, split=self.split, n=self.n,
                   defense_kind=self.kind)  # fmt: skip
        threat = dict(out.get("threat", {}))
        threat.update(norm=self.threat.norm, eps=self.threat.eps, step_size=self.threat.step_size,
                      steps=self.threat.steps, random_start=self.threat.random_start,
                      budget_from=self.threat.budget_from)  # fmt: skip
        out["threat"] = threat
        numbers = {
            "original": self.bare.clean, "original_attacked": self.bare.weak,
            "defensive": self.defended.clean, "original_attacked_strong": self.bare.strong,
            "defensive_attacked": self.defended.weak,
            "defensive_undo_attacked": self.undo_then_attack,
            "defensive_attacked_strong": self.defended.strong,
            "defended_adversarial": self.weak_points_through_defense, "adaptive": self.adaptive,
            "bare_strong_adaptive_examples": self.bare_strong_on_adaptive_examples,
        }  # fmt: skip
        accuracy = dict(out.get("accuracy", {}))
        for key, value in numbers.items():
            if value is not None:
                accuracy[key] = value.accuracy
            else:
                accuracy.pop(key, None)
        out["accuracy"] = accuracy
        same = {"original_attacked": self.bare.weak_on_strong_examples,
                "defensive_attacked": self.defended.weak_on_strong_examples}  # fmt: skip
        if "strong" in out and isinstance(out["strong"], dict) and out["strong"]:
            kept = out["strong"].get("weak_on_same_examples", {})
            out["strong"]["weak_on_same_examples"] = {
                **kept,
                **{k: v.accuracy for k, v in same.items() if v is not None},
            }
        return out


def read(
    results: Sequence[Mapping[str, Any] | DefenseResult] | Mapping[str, Any],
) -> list[DefenseResult]:
    """Typed records of ``dp --json`` output (one object or a list of them)."""
    items = [results] if isinstance(results, Mapping) else list(results)
    return [r if isinstance(r, DefenseResult) else DefenseResult.from_json(r) for r in items]


# -- sweeps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRow:
    """One radius of ``sweep --eps``: the bare model and the defended points, each clean,
    under the weak attack and under the strong suite (on the suite's first examples)."""

    eps: float
    step_size: float
    defense: str
    bare: Attacked
    defended: Attacked

    @classmethod
    def of(cls, result: DefenseResult) -> SweepRow:
        return cls(result.threat.eps, result.threat.step_size, result.defense, result.bare,
                   result.defended)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"eps": self.eps, "step_size": self.step_size, "defense": self.defense,
                "bare": _attacked_json(self.bare), "defended": _attacked_json(self.defended)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepRow:
        if "bare" not in data:  # a row saved before the typed results
            return cls._from_flat(data)
        return cls(data["eps"], data["step_size"], data["defense"],
                   _attacked_of(data["bare"]), _attacked_of(data["defended"]))  # fmt: skip

    @classmethod
    def _from_flat(cls, row: Mapping[str, Any]) -> SweepRow:
        n, m = row["n"], row.get("strong_n")

        def side(name: str, clean: str) -> Attacked:
            return Attacked(Measured(float(row[clean]), n), _measured(row.get(f"{name}_attacked"), n),
                            _measured(row.get(f"{name}_attacked_strong_n"), m),
                            _measured(row.get(f"{name}_attacked_strong"), m))  # fmt: skip

        return cls(row["eps"], row["step_size"], row["defense"], side("original", "original"),
                   side("defensive", "defensive"))  # fmt: skip


@dataclass(frozen=True)
class BudgetRow:
    """One (defense, defender's budget) of ``sweep --defense-eps`` at the attacker's fixed
    eps; a budget of 0 is the bare model."""

    defense: str
    eps_def: float
    eps: float
    numbers: Attacked

    def to_json(self) -> dict[str, Any]:
        return {"defense": self.defense, "eps_def": self.eps_def, "eps": self.eps,
                **_attacked_json(self.numbers)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetRow:
        if "weak_strong_n" in data or "strong_n" in data:  # saved before the typed results
            n, m = data["n"], data.get("strong_n")
            numbers = Attacked(Measured(float(data["clean"]), n), _measured(data.get("weak"), n),
                               _measured(data.get("weak_strong_n"), m),
                               _measured(data.get("strong"), m))  # fmt: skip
        else:
            numbers = _attacked_of(data)
        return cls(data["defense"], data["eps_def"], data["eps"], numbers)


def _attacked_json(side: Attacked) -> dict[str, Any]:
    """``{"clean": {"accuracy", "n"}, "weak": …, …}``; a number not measured is left out."""
    return {name: {"accuracy": value.accuracy, "n": value.n}
            for name, value in (("clean", side.clean), ("weak", side.weak),
                                ("weak_on_strong_examples", side.weak_on_strong_examples),
                                ("strong", side.strong))
            if value is not None}  # fmt: skip


def _attacked_of(data: Mapping[str, Any]) -> Attacked:
    def get(name: str) -> Measured | None:
        value = data.get(name)
        return (
            _measured(value.get("accuracy"), value.get("n")) if isinstance(value, Mapping) else None
        )

    clean = get("clean")
    if clean is None:
        raise ValueError("a result row without its clean accuracy")
    return Attacked(clean, get("weak"), get("weak_on_strong_examples"), get("strong"))
