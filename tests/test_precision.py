"""--precision auto: bf16 only where it is native and measured equal to fp32."""

import pytest

from defpert.study import dp as rq1
from defpert.study.dp import DPConfig, run_dp


def config(**kw):
    return DPConfig(norm="linf", eps=0.1, steps=3, step_size=0.03, defenses=("ce",),
                    strong=False, adaptive_limit=0, precision="auto", **kw)  # fmt: skip


def test_auto_is_fp32_without_native_bfloat16(digits_model, digits_test, monkeypatch):
    monkeypatch.setattr(rq1, "native_bf16", lambda device: False)
    said = []
    (result,) = run_dp(digits_model, digits_test.head(50), config(), report=said.append)
    assert result["precision"]["name"] == "fp32" and result["precision"]["requested"] == "auto"
    assert any("precision auto: fp32" in s and "no native bfloat16" in s for s in said)


@pytest.mark.parametrize("tolerance, chosen", [(1.0, "bf16"), (-1.0, "fp32")])
def test_auto_uses_bf16_only_when_the_check_agrees(digits_model, digits_test, monkeypatch,
                                                    tolerance, chosen):  # fmt: skip
    monkeypatch.setattr(rq1, "native_bf16", lambda device: True)
    monkeypatch.setattr(rq1, "PRECISION_TOLERANCE", tolerance)
    (result,) = run_dp(digits_model, digits_test.head(50), config())
    p = result["precision"]
    assert p["name"] == chosen and p["check_n"] == 50
    assert p["agrees_within_0.5pct"] == (chosen == "bf16")


def test_auto_checks_the_defended_numbers_too(digits_model, digits_test, monkeypatch):
    """A defense that goes wrong in bf16 keeps fp32, even where the weak attack agrees."""
    monkeypatch.setattr(rq1, "native_bf16", lambda device: True)
    monkeypatch.setattr(rq1, "PRECISION_TOLERANCE", 0.5)  # only a gross difference counts
    real_defend = rq1.defend

    def defend(model, x, y, defense, **kw):
        points = real_defend(model, x, y, defense, **kw)
        return 1 - points if kw.get("precision") == "bf16" else points  # inverted: all wrong

    monkeypatch.setattr(rq1, "defend", defend)
    (result,) = run_dp(digits_model, digits_test.head(50), config())
    p = result["precision"]
    assert p["name"] == "fp32" and not p["agrees_within_0.5pct"]
    assert abs(p["fp32_attacked"] - p["reduced_attacked"]) <= 0.5  # the weak attack agreed
    assert p["largest_difference_at"] == "ce/defensive"


def test_training_in_bf16_is_recorded_and_refused_when_unknown(tmp_path, capsys):
    """bf16 training: the card says so (an fp32 card has no precision, as before the
    option), and an unknown precision is one line with exit 2 before any work."""
    import json

    from defpert.cli import main

    out = tmp_path / "m"
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out"]
    assert main([*argv, str(out), "--precision", "bf16"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["precision"] == "bf16"
    assert main([*argv, str(tmp_path / "f")]) == 0
    assert "precision" not in json.loads((tmp_path / "f" / "model.json").read_text())["training"]
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "x"), "--precision", "fp8"]) == 2
    assert capsys.readouterr().err.strip() == (
        "defpert: error: unknown --precision 'fp8'; choose one of: fp32, bf16"
    )
    assert not (tmp_path / "x").exists()
