"""Costs counted in passes of the classifier, exactly, whatever wraps it."""

from __future__ import annotations

import json

import pytest
import torch

from defpert.attacks import StrongConfig, pgd, strong_attack
from defpert.attacks.search import Bf16Search
from defpert.cli import main
from defpert.core.passes import counting
from defpert.core.threat import L2Ball, LinfBall


@pytest.mark.parametrize("threat", [LinfBall(0.1), L2Ball(0.5)], ids=["linf", "l2"])
@pytest.mark.parametrize("steps", [1, 7])
def test_pgd_k_counts_k_forward_and_k_backward_passes_per_example(digits_model, digits_test, threat,
                                                                  steps):  # fmt: skip
    x, y = digits_test.images[:30], digits_test.labels[:30]
    with counting(digits_model) as passes:
        pgd(digits_model, x, y, threat=threat, steps=steps, step_size=0.02, batch_size=8)
    # one forward and one backward pass per step and example, and one image that checks
    # the input fits the model before the attack starts
    assert passes.backward == steps * len(x)
    assert passes.forward == steps * len(x) + 1


def test_passes_are_counted_at_the_classifier_through_a_bf16_search(digits_model, digits_test):
    x = digits_test.images[:12]
    with counting(digits_model) as passes:
        Bf16Search(digits_model)(x)
        with torch.no_grad():
            digits_model(x)
    assert (passes.forward, passes.backward) == (24, 0)
    with counting(digits_model) as after:  # hooks removed on exit: a new count starts at 0
        pass
    assert (after.forward, after.backward) == (0, 0)


def test_the_strong_suite_spends_passes_only_on_the_examples_still_standing(digits_model,
                                                                           digits_test):  # fmt: skip
    x, y = digits_test.images[:40], digits_test.labels[:40]
    cfg = StrongConfig("quick", steps=10, square_queries=20)
    with counting(digits_model) as passes:
        result = strong_attack(digits_model, x, y, threat=LinfBall(0.1), config=cfg)
    # APGD-CE alone would spend 10 backward passes on every example; the cascade spends fewer
    # where examples fall early, and never more than every attack on every example
    assert 0 < passes.backward <= len(x) * 10 * (1 + 3)
    assert result.broken_by["apgd-ce"] > 0


def test_dp_reports_each_stage_s_passes_and_a_resumed_run_the_same(tmp_path, capsys):
    argv = ["dp", "--dataset", "digits", "-p", "linf", "-k", "4", "-e", "0.2", "-a", "0.05",
            "--defense", "ce,hedge,robustify", "--strong", "quick", "--limit", "30", "--strong-limit", "12",
            "--strong-steps", "5", "--square-queries", "10", "--adaptive-limit", "6",
            "--adaptive-square-queries", "10", "--json", "--no-progress",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    ce, hedge, robustify = first
    # PGD-4: 4 passes each way per example, and one image checking the input (1/30, rounded)
    assert ce["passes"]["adversarial"] == {"n": 30, "forward": 4.03, "backward": 4.0}
    assert set(ce["passes"]) == {"adversarial", "strong-original", "ce/defensive",
                                 "ce/defensive-attacked", "strong-ce"}  # fmt: skip
    assert set(hedge["passes"]) == {"adversarial", "strong-original", "hedge/defensive",
                                    "hedge/defended-adversarial", "adaptive-hedge"}  # fmt: skip
    assert hedge["passes"]["adaptive-hedge"]["n"] == 6
    assert robustify["passes"]["robustify/undo-attacked"]["n"] == 12  # the strong examples
    assert main(argv) == 0  # everything reused: the saved results keep their cost
    again = json.loads(capsys.readouterr().out)
    assert again[1]["passes"]["adaptive-hedge"] == hedge["passes"]["adaptive-hedge"]
    assert again[0]["passes"]["strong-ce"] == ce["passes"]["strong-ce"]


def test_measuring_the_chunk_size_costs_the_attack_nothing(digits_model, digits_test, monkeypatch):
    """The first attack on a CPU times the chunk candidates (runtime.calibrate): those passes
    are no part of the attack's cost, which stays k per step and example plus the check."""
    from defpert.runtime import calibrate

    monkeypatch.delenv(calibrate.ENV, raising=False)
    monkeypatch.setattr(calibrate, "_chosen", {})
    monkeypatch.setattr(calibrate, "_cached", lambda key, load: 0)  # measure here and now
    measured = []
    real = calibrate.measure
    monkeypatch.setattr(calibrate, "measure", lambda *a, **k: measured.append(1) or real(
        *a, **{**k, "seconds": 0.02, "rounds": 1}))  # fmt: skip
    x, y = digits_test.images[:30], digits_test.labels[:30]
    with counting(digits_model) as passes:
        pgd(digits_model, x, y, threat=LinfBall(0.1), steps=3, step_size=0.02)
    assert measured  # the candidates were timed inside the counted block
    assert (passes.forward, passes.backward) == (3 * len(x) + 1, 3 * len(x))
