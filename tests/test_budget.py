"""Accuracy versus the defender's budget, the attacker's eps fixed."""

import pytest

from defpert.cli import main
from defpert.results import Attacked, BudgetRow, Measured
from defpert.study.dp import DPConfig
from defpert.study.sweep import run_budget_sweep


def test_budget_zero_is_the_bare_model_and_budgets_grow_the_defense(digits_model, digits_test):
    base = DPConfig(norm="linf", eps=0.1, steps=5, step_size=0.02, defenses=("ce", "margin"),
                    strong=False, adaptive_limit=0)  # fmt: skip
    data = digits_test.head(80)
    saved = run_budget_sweep(digits_model, data, base, [0, 0.05, 0.2])
    rows = [BudgetRow.from_json(r) for r in saved]
    assert [BudgetRow.from_json(r.to_json()) for r in rows] == rows  # the JSON round trip
    assert [(r.defense, r.eps_def) for r in rows] == [
        ("ce", 0), ("margin", 0), ("ce", 0.05), ("margin", 0.05), ("ce", 0.2), ("margin", 0.2)]  # fmt: skip
    bare = [r.numbers.weak for r in rows if r.eps_def == 0]
    assert bare[0] == bare[1] and bare[0].accuracy < 0.9  # the undefended point, each curve
    ce = {r.eps_def: r.numbers.weak.accuracy for r in rows if r.defense == "ce"}
    assert ce[0] < ce[0.05] < ce[0.2]  # a larger budget, a harder point to attack
    assert all(r.eps == 0.1 and r.numbers.weak.n == 80 for r in rows)


def test_sweep_command_sweeps_the_defense_budget(capsys, digits_cnn, tmp_path):
    argv = ["sweep", "--dataset", "digits", "--checkpoint", str(digits_cnn), "--eps", "0.1",
            "--defense-eps", "0,0.1", "--defense", "ce,margin", "--limit", "40", "--no-strong",
            "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["defense", "eps_def"]
    assert [line.split()[:2] for line in lines[1:4]] == [["none", "0"], ["ce", "0.1"],
                                                        ["margin", "0.1"]]  # fmt: skip
    assert (tmp_path / "b" / "budget.json").is_file() and (
        tmp_path / "b" / "budget-linf.png"
    ).is_file()


@pytest.mark.parametrize(("extra", "message"), [
    (["--eps", "0.1,0.2", "--defense-eps", "0,0.1"], "--defense-eps sweeps the defender's budget at one"),
    (["--defense-eps", "-0.1"], "--defense-eps must be 0 or more"),
    (["--defense", "ce,margin"], "sweep over eps takes one --defense"),
])  # fmt: skip
def test_sweep_refuses_budget_settings_that_cannot_work(capsys, tmp_path, extra, message):
    assert main(["sweep", "--dataset", "digits", *extra, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_budget_figure_draws_a_curve_per_defense_and_attack():
    from defpert.report.figures import budget_curves

    def row(defense, eps_def):
        strong = None if defense == "ce" else Measured(0.4 + eps_def, 50)
        numbers = Attacked(Measured(0.9, 100), Measured(0.5 + eps_def, 100), None, strong)
        return BudgetRow(defense, eps_def, 0.2, numbers)

    rows = [row(d, e) for d in ("ce", "robustify") for e in (0, 0.2)]
    fig = budget_curves(rows)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["ce, weak attack", "robustify, strong attack", "robustify, weak attack"]
