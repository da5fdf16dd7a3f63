"""The defense registry: each defense declared once; a new entry is a defense everywhere."""

from __future__ import annotations

import json

import pytest

from defpert.cli import main
from defpert.defenses import registry
from defpert.defenses.registry import DefenseSpec
from defpert.errors import DefpertError
from defpert.report.document import markdown


@pytest.fixture
def shy():
    """A reactive defense added for one test: descend cross-entropy to the prediction."""
    spec = registry.register(DefenseSpec("shy", reactive=True, objective="ce", ascend=False,
                                         uses_label=False, summary="a test's defense"))  # fmt: skip
    yield spec
    registry.unregister("shy")


def test_a_registered_defense_runs_in_dp_the_adaptive_attack_and_the_report(
    shy, capsys, digits_cnn, tmp_path
):
    argv = ["dp", "--dataset", "digits", "--checkpoint", str(digits_cnn), "-k", "3", "-e", "0.2",
            "-a", "0.05", "--limit", "20", "--strong-limit", "10", "--strong-steps", "3",
            "--strong", "quick", "--square-queries", "10", "--adaptive-limit", "6",
            "--adaptive-square-queries", "5", "--defense", "shy", "--json", "--no-progress",
            "--out", str(tmp_path / "dp")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["defense"] == "shy" and result["defense_kind"] == "reactive"
    assert result["adaptive"]["n"] == 6  # attacked through it, with no other edit
    assert "clean" in result["adaptive"]["broken_by"]
    assert "| shy |" in markdown("t", [], {"linf": [result]}, {}).replace("`", "")
    from defpert.cli import build_parser

    dp_help = build_parser()._subparsers._group_actions[0].choices["dp"].format_help()  # type: ignore[union-attr]
    assert "shy" in dp_help  # listed among --defense's choices


def test_the_registry_lists_every_defense_once_with_what_it_is():
    assert registry.names() == ("ce", "margin", "robustify", "robustify-label-free",
                                "anti-adversary", "hedge")  # fmt: skip
    assert registry.names(reactive=True) == ("anti-adversary", "hedge")
    assert registry.get("hedge").ascend and not registry.get("ce").ascend
    assert registry.get("robustify").inner_attack and registry.get("robustify").uses_label
    assert not registry.get("robustify-label-free").uses_label
    with pytest.raises(DefpertError, match="unknown defense 'magic'; choose one of: ce, margin"):
        registry.get("magic")
    with pytest.raises(DefpertError, match="already registered"):
        registry.register(registry.get("ce"))
    with pytest.raises(DefpertError, match="cannot read labels"):
        DefenseSpec("x", reactive=True, objective="ce", ascend=False, uses_label=True)
