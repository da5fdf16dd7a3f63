"""Typed results: every number of a ``dp`` result under a name a reader can guess, with a
JSON round trip that gives every saved result back key for key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import defpert.results as results_module
from defpert.cli import main
from defpert.results import Attacked, BudgetRow, DefenseResult, Measured, SweepRow, read

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dp_json(digits_cnn, tmp_path_factory, isolated_environment):
    """A real run's ``--json`` output: proactive, with an inner attack, and reactive."""
    import contextlib
    import io

    out = io.StringIO()
    argv = ["dp", "--dataset", "digits", "--checkpoint", str(digits_cnn), "-k", "5",
            "--limit", "16", "--defense", "ce,robustify,hedge", "--defense-steps", "3",
            "--inner-steps", "2", "--strong", "quick", "--strong-limit", "8",
            "--square-queries", "10", "--adaptive-limit", "4", "--adaptive-square-queries", "5",
            "--no-progress", "--json", "--out", str(tmp_path_factory.mktemp("r") / "run")]  # fmt: skip
    with isolated_environment(), contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_a_result_reads_under_names_a_reader_can_guess(dp_json):
    ce, robustify, hedge = read(dp_json)
    raw = dp_json[0]
    a, strong = raw["accuracy"], raw["strong"]
    assert ce.bare.clean == Measured(a["original"], 16)
    assert ce.bare.weak == Measured(a["original_attacked"], 16)
    assert ce.bare.strong == Measured(a["original_attacked_strong"], 8)
    assert ce.bare.weak_on_strong_examples == Measured(
        strong["weak_on_same_examples"]["original_attacked"], 8
    )
    assert ce.defended.strong == Measured(a["defensive_attacked_strong"], 8)
    assert ce.decisive is ce.defended.strong and ce.bare_on_decisive_examples is ce.bare.strong
    assert robustify.undo_then_attack is not None and ce.undo_then_attack is None
    assert hedge.reactive and hedge.defended.weak is None and hedge.defended.strong is None
    assert hedge.adaptive == Measured(dp_json[2]["accuracy"]["adaptive"], 4)
    assert hedge.decisive is hedge.adaptive
    assert hedge.bare_on_decisive_examples is hedge.bare_strong_on_adaptive_examples
    assert (
        str(ce.bare.strong)
        == f"{ce.bare.strong.accuracy:.1%} [" + str(ce.bare.strong).split("[")[1]
    )
    low, high = ce.bare.strong.interval95
    assert 0 <= low <= ce.bare.strong.accuracy <= high <= 1


def test_the_json_round_trip_gives_every_key_back(dp_json):
    for raw in dp_json:
        typed = DefenseResult.from_json(raw)
        assert typed.to_json() == raw
        assert DefenseResult.from_json(typed.to_json()) == typed


def test_every_saved_result_of_the_experiments_reads_and_round_trips():
    """The files the docs are rendered from: every dp result in them, whatever its age."""
    found = 0

    def walk(value):
        nonlocal found
        if isinstance(value, dict):
            if "accuracy" in value and "defense_kind" in value:
                found += 1
                assert DefenseResult.from_json(value).to_json() == value
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in sorted((ROOT / "experiments" / "results").glob("*.json")):
        walk(json.loads(path.read_text()))
    assert found >= 20


def test_a_changed_typed_number_is_what_the_json_says():
    raw = {"threat": {"norm": "linf", "eps": 0.2, "step_size": 0.01, "steps": 20},
           "defense": "ce", "defense_kind": "proactive", "dataset": "mnist", "split": "test",
           "n": 100, "accuracy": {"original": 0.99, "original_attacked": 0.5, "defensive": 1.0,
                                  "defensive_attacked": 0.9, "original_attacked_strong": 0.4,
                                  "defensive_attacked_strong": 0.45},
           "strong": {"n": 50, "weak_on_same_examples": {"original_attacked": 0.52,
                                                         "defensive_attacked": 0.92}}}  # fmt: skip
    typed = DefenseResult.from_json(raw)
    from dataclasses import replace

    changed = replace(typed, defended=replace(typed.defended, strong=Measured(0.3, 50)))
    out = changed.to_json()
    assert out["accuracy"]["defensive_attacked_strong"] == 0.3
    assert out["strong"]["weak_on_same_examples"]["defensive_attacked"] == 0.92


def test_the_glossary_names_every_number_a_result_holds(dp_json):
    """The module's table (JSON key -> typed name) lists every accuracy a run writes."""
    doc = results_module.__doc__ or ""
    keys = {k for raw in dp_json for k in raw["accuracy"]}
    assert keys and all(f"``accuracy.{k}``" in doc for k in keys)


def test_sweep_rows_round_trip_and_read_rows_saved_before_them():
    side = Attacked(Measured(0.9, 100), Measured(0.5, 100), Measured(0.52, 50), Measured(0.4, 50))
    row = SweepRow(0.1, 0.005, "ce", side, side)
    assert SweepRow.from_json(row.to_json()) == row
    assert json.loads(json.dumps(row.to_json())) == row.to_json()
    legacy = {"eps": 0.1, "step_size": 0.005, "defense": "ce", "n": 100, "strong_n": 50,
              "original": 0.9, "original_attacked": 0.5, "original_attacked_strong_n": 0.52,
              "original_attacked_strong": 0.4, "defensive": 0.9, "defensive_attacked": 0.5,
              "defensive_attacked_strong_n": 0.52, "defensive_attacked_strong": 0.4}  # fmt: skip
    assert SweepRow.from_json(legacy) == row
    budget = BudgetRow("ce", 0.1, 0.2, side)
    assert BudgetRow.from_json(budget.to_json()) == budget
    old = {"defense": "ce", "eps_def": 0.1, "eps": 0.2, "n": 100, "strong_n": 50, "clean": 0.9,
           "weak": 0.5, "weak_strong_n": 0.52, "strong": 0.4}  # fmt: skip
    assert BudgetRow.from_json(old) == budget
