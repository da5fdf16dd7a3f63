"""Stored results are reused only by the same settings, data, weights *and code*."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from defpert.study import dp as rq1
from defpert.study import store
from defpert.study.dp import DPConfig, run_dp
from defpert.study.reproduce import _stage


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_dp_results_of_other_code_are_recomputed(digits_model, digits_test, tmp_path, monkeypatch):
    config = DPConfig(norm="linf", eps=0.1, steps=3, step_size=0.03, strong=False, adaptive_limit=0)
    data = digits_test.head(30)
    calls = _count_calls(monkeypatch, rq1, "pgd")
    first = run_dp(digits_model, data, config, out=tmp_path)
    computed = len(calls)
    assert computed >= 2  # the original and the defended data were attacked
    again = run_dp(digits_model, data, config, out=tmp_path)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]
    assert len(calls) == computed  # same code: every attacked version reused
    changed = {"version": store.__version__, "source_sha256": "0" * 64}
    monkeypatch.setattr(store, "code_version", lambda: changed)
    run_dp(digits_model, data, config, out=tmp_path)
    assert len(calls) == 2 * computed  # other code: everything recomputed
    assert (
        '"source_sha256": "' + "0" * 64 in (tmp_path / "partial/test/fingerprint.json").read_text()
    )


def test_reproduce_stage_of_other_code_is_recomputed(tmp_path, monkeypatch):
    computed = []

    def compute():
        computed.append(1)
        return {"value": len(computed)}

    path = tmp_path / "stage.json"
    assert _stage(path, {"a": 1}, compute, lambda _m: None, "s") == {"value": 1}
    assert _stage(path, {"a": 1}, compute, lambda _m: None, "s") == {"value": 1}
    monkeypatch.setattr(store, "code_version", lambda: {"version": "0", "source_sha256": "1"})
    assert _stage(path, {"a": 1}, compute, lambda _m: None, "s") == {"value": 2}


def test_code_version_hashes_the_package_sources():
    version = store.code_version()
    assert version["version"] == store.__version__
    assert len(version["source_sha256"]) == 64
    # every module of the package, not only the study's: a result computed by other
    # attack, defense or engine code is never reused
    hashed = {str(p.relative_to(store.PACKAGE_DIR)) for p in store.source_files()}
    import defpert

    package = Path(defpert.__file__).resolve().parent
    assert hashed == {str(p.relative_to(package)) for p in package.rglob("*.py")}
    assert {"core/engine.py", "attacks/strong.py", "defenses/methods.py"} <= hashed


def test_a_defense_of_other_settings_recomputes_only_its_own_pieces(
    digits_model, digits_test, tmp_path, monkeypatch
):
    data = digits_test.head(30)
    base = dict(norm="linf", eps=0.1, steps=3, step_size=0.03, strong=False, adaptive_limit=0)
    defended = _count_calls(monkeypatch, rq1, "defend")
    attacked = _count_calls(monkeypatch, rq1, "pgd")
    run_dp(digits_model, data, DPConfig(**base, defenses=("ce", "margin")), out=tmp_path)
    assert (len(defended), len(attacked)) == (2, 3)  # original + one per defense
    changed = DPConfig(**base, defenses=("ce", "margin"), defense_eps=0.05)
    run_dp(digits_model, data, changed, out=tmp_path)
    assert (len(defended), len(attacked)) == (4, 5)  # both defenses again, not the original
    run_dp(digits_model, data, DPConfig(**base, defenses=("ce",), defense_eps=0.05), out=tmp_path)
    assert (len(defended), len(attacked)) == (4, 5)  # nothing new to compute


# A short study with the strong suite: what one run can lend another.
LENDING = DPConfig(norm="linf", eps=0.1, steps=3, step_size=0.03, defenses=("ce",),
                   strong_tier="quick", strong_steps=3, square_queries=10, strong_limit=10,
                   adaptive_limit=0)  # fmt: skip


def test_another_run_lends_the_attacks_on_the_original_data(
    digits_model, digits_test, tmp_path, monkeypatch
):
    data = digits_test.head(30)
    config = LENDING
    strong = _count_calls(monkeypatch, rq1, "strong_attack")
    first = run_dp(digits_model, data, config, out=tmp_path / "a")
    assert len(strong) == 2  # original and defended
    other = DPConfig(**{**vars(config), "defense_eps": 0.05})
    second = run_dp(digits_model, data, other, out=tmp_path / "b", lend_from=tmp_path / "a")
    assert len(strong) == 3  # only the defended points: the original's result was lent
    for key in ("original_attacked", "original_attacked_strong"):
        assert second[0]["accuracy"][key] == first[0]["accuracy"][key]
    elsewhere = DPConfig(**{**vars(config), "eps": 0.12})  # other attacks: nothing to lend
    run_dp(digits_model, data, elsewhere, out=tmp_path / "c", lend_from=tmp_path / "a")
    assert len(strong) == 5


def test_a_run_killed_in_its_strong_stage_continues_after_the_last_finished_attack(
    digits_model, digits_test, tmp_path, monkeypatch
):
    from defpert.attacks import strong as strong_module

    class Killed(Exception):
        pass

    ran: list[str] = []
    kill_at: list[str] = []

    def plan(self):
        def attack(name):
            def run(m, x, y, t, g, a, r):
                if name in kill_at:
                    kill_at.clear()
                    raise Killed
                ran.append(name)
                return (x + t.eps * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)

            return run

        return [(name, attack(name)) for name in ("noise-a", "noise-b", "noise-c")]

    monkeypatch.setattr(strong_module.StrongConfig, "plan", plan)
    data = digits_test.head(30)
    config = DPConfig(norm="linf", eps=0.25, steps=2, step_size=0.1, defenses=("ce",),
                      strong_limit=30, adaptive_limit=0)  # fmt: skip
    whole = run_dp(digits_model, data, config, out=tmp_path / "whole")
    kill_at.append("noise-c")
    with pytest.raises(Killed):
        run_dp(digits_model, data, config, out=tmp_path / "run")
    journal = tmp_path / "run/partial/test/strong-original.journal.npz"
    assert journal.is_file()
    ran.clear()
    again = run_dp(digits_model, data, config, out=tmp_path / "run")
    assert ran[0] == "noise-c"  # the original's cascade continued after noise-b
    assert ran[1:] == ["noise-a", "noise-b", "noise-c"]  # the defended points, in full
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in whole]
    assert [r["strong"]["broken_by"] for r in again] == [r["strong"]["broken_by"] for r in whole]
    assert not journal.exists()  # removed once the stage's result is recorded


def test_an_unreadable_journal_starts_the_cascade_over(tmp_path):
    journal = store.FileJournal(tmp_path / "strong-x.journal.npz")
    assert journal.read() is None
    journal.path.write_bytes(b"not an npz")
    assert journal.read() is None
    state = store.CascadeState(["apgd-ce"], torch.rand(4, 1, 8, 8), torch.tensor([True, False, True, True]),
                               {"clean": 1, "apgd-ce": 0}, {"apgd-ce": 1.5},
                               torch.Generator().manual_seed(3).get_state())  # fmt: skip
    journal.write(state)
    back = journal.read()
    assert back is not None and back.done == ["apgd-ce"]
    assert torch.equal(back.worst, state.worst) and torch.equal(back.robust, state.robust)
    assert back.broken_by == state.broken_by and back.seconds == state.seconds
    assert torch.equal(back.generator, state.generator)
    assert back.running is None and back.contested is None
    # a bf16 search's contested examples come back (a journal without them reads None)
    state.contested = torch.tensor([False, True, False, True])
    journal.write(state)
    back = journal.read()
    assert back is not None and torch.equal(back.contested, state.contested)
    state.contested = None
    # a running attack's bookmark comes back with its position and tensors
    state.running = store.Bookmark({"part": 0, "restart": 1, "query": 250},
                                   {"out": torch.rand(4, 1, 8, 8), "run_margin": torch.rand(3)})  # fmt: skip
    journal.write(state)
    back = journal.read()
    assert back is not None and back.running is not None
    assert back.running.position == state.running.position
    assert set(back.running.tensors) == {"out", "run_margin"}
    assert all(torch.equal(back.running.tensors[k], v) for k, v in state.running.tensors.items())


def test_the_other_budget_convention_borrows_the_attacks_on_the_original_data(
    digits_model, digits_test, tmp_path, monkeypatch
):
    data = digits_test.head(30)
    config = LENDING
    strong = _count_calls(monkeypatch, rq1, "strong_attack")
    heard: list[str] = []
    first = run_dp(digits_model, data, config, out=tmp_path / "a")
    stricter = DPConfig(**{**vars(config), "budget_from": "original"})
    second = run_dp(digits_model, data, stricter, out=tmp_path / "b", lend_from=tmp_path / "a",
                    report=heard.append)  # fmt: skip
    assert len(strong) == 3  # the defended points only: the original's result was lent
    assert any(line.startswith("lent ") for line in heard)
    assert (
        second[0]["accuracy"]["original_attacked_strong"]
        == (first[0]["accuracy"]["original_attacked_strong"])
    )
    assert second[0]["threat"]["budget_from"] == "original"


def test_a_strong_attack_killed_inside_square_continues_from_its_file(
    digits_model, digits_test, tmp_path, monkeypatch
):
    from defpert.attacks import StrongConfig, strong_attack
    from defpert.core.threat import LinfBall
    from defpert.testing import GradientMasked

    class Killed(Exception):
        pass

    masked = GradientMasked(digits_model, levels=16)  # only Square breaks it
    x, y = digits_test.images[:40], digits_test.labels[:40]
    kw = {"threat": LinfBall(0.15), "config": StrongConfig(tier="quick", steps=3, square_queries=200),
          "seed": 2}  # fmt: skip
    whole = strong_attack(masked, x, y, **kw)
    monkeypatch.setattr(store.FileJournal, "interval", 0.0)  # a bookmark at every query
    journal = store.FileJournal(tmp_path / "strong-x.journal.npz")
    real_write, writes = store.FileJournal.write, []

    def write_then_die(self, state):
        real_write(self, state)
        writes.append(state.running.position if state.running else None)
        if len(writes) == 6 + 100:  # APGD-CE and APGD-T: 6 writes; then 100 queries of Square
            raise Killed

    monkeypatch.setattr(store.FileJournal, "write", write_then_die)
    with pytest.raises(Killed):
        strong_attack(masked, x, y, journal=journal, **kw)
    monkeypatch.setattr(store.FileJournal, "write", real_write)
    saved = journal.read()
    assert saved is not None and saved.done == ["apgd-ce", "apgd-t"]
    assert saved.running is not None and saved.running.position == {
        "part": 0,
        "restart": 0,
        "query": 100,
    }
    assert saved.running.tensors["unbroken"].dtype == torch.bool
    again = strong_attack(masked, x, y, journal=journal, **kw)
    assert whole.broken_by["square-200"] > 0
    assert torch.equal(again.adversarial, whole.adversarial) and again.broken_by == whole.broken_by


def test_the_resume_line_names_the_attack_it_continues_inside():
    from defpert.attacks import StrongConfig
    from defpert.attacks.journal import Bookmark

    state = store.CascadeState(["apgd-ce", "apgd-t"], torch.zeros(2, 1, 8, 8), torch.ones(2, dtype=torch.bool),
                               {}, {}, torch.Generator().get_state())  # fmt: skip
    config = StrongConfig(tier="standard")
    assert rq1._resumed_at(state, config) == "after apgd-ce, apgd-t"
    state.running = Bookmark({"runs_done": 2}, {})
    assert (
        rq1._resumed_at(state, config)
        == "after apgd-ce, apgd-t and inside pgd-ce-100 from its last bookmark"
    )


ROBUSTIFY_IN_CHUNKS = DPConfig(norm="linf", eps=0.1, steps=3, step_size=0.03, defenses=("robustify", "hedge"),
                               inner_steps=2, batch_size=8, strong=False, adaptive_limit=0)  # fmt: skip


def test_a_run_killed_in_its_defense_continues_after_the_rows_it_kept(
    digits_model, digits_test, tmp_path, monkeypatch
):
    from defpert.core import engine

    class Killed(Exception):
        pass

    data = digits_test.head(60)  # 8 chunks of at most 8 rows
    whole = run_dp(digits_model, data, ROBUSTIFY_IN_CHUNKS, out=tmp_path / "whole")
    monkeypatch.setattr(store.RowsJournal, "interval", 0.0)  # a write after every chunk
    real_write, writes = store.RowsJournal.write, []

    def write_then_die(self, x, labels, batch_size, rows):
        real_write(self, x, labels, batch_size, rows)
        writes.append(len(rows))
        if len(writes) == 3:
            raise Killed

    monkeypatch.setattr(store.RowsJournal, "write", write_then_die)
    with pytest.raises(Killed):
        run_dp(digits_model, data, ROBUSTIFY_IN_CHUNKS, out=tmp_path / "run")
    journal = tmp_path / "run/partial/test/robustify/defensive.rows.npz"
    assert journal.is_file() and writes == [8, 16, 24]
    monkeypatch.setattr(store.RowsJournal, "write", real_write)
    rows: list[int] = []
    real_batch = engine.perturb_batch

    def counting(model, x, *args, **kwargs):
        rows.append(len(x))
        return real_batch(model, x, *args, **kwargs)

    monkeypatch.setattr(engine, "perturb_batch", counting)
    heard: list[str] = []
    again = run_dp(
        digits_model, data, ROBUSTIFY_IN_CHUNKS, out=tmp_path / "run", report=heard.append
    )
    assert sum(rows[:5]) == 60 - 24  # the defense computed only the rows it had not kept
    assert "continuing the robustify defense after its first 24 examples (saved progress)" in heard
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in whole]
    saved = store.load_npz(tmp_path / "run/versions/test/robustify/defensive.npz")[0]
    expected = store.load_npz(tmp_path / "whole/versions/test/robustify/defensive.npz")[0]
    assert (saved == expected).all()  # the same points as the uninterrupted run
    assert not journal.exists()  # removed once the data version is saved


def test_a_rows_journal_of_other_inputs_or_damaged_is_ignored(tmp_path):
    journal = store.RowsJournal(tmp_path / "defensive.rows.npz")
    x, labels = torch.rand(10, 1, 8, 8), torch.arange(10) % 3
    assert journal.read(x, labels) is None and journal.rows_done() == 0
    journal.write(x, labels, 4, x[:8] * 0.5)
    back = journal.read(x, labels)
    assert back is not None and back[:2] == (4, 8) and torch.equal(back[2], x[:8] * 0.5)
    assert journal.rows_done() == 8
    other = store.RowsJournal(journal.path)  # a run on other images or labels starts over
    assert other.read(x.flip(0), labels) is None and other.read(x, labels.flip(0)) is None
    journal.path.write_bytes(b"not an npz")
    assert journal.read(x, labels) is None and journal.rows_done() == 0


@pytest.mark.parametrize("spoil", ["truncate", "fewer rows", "nan"])
def test_a_spoiled_saved_version_is_computed_again_and_the_rerun_is_right(
    spoil, capsys, digits_cnn, tmp_path
):
    """A data version damaged on disk is never trusted: the rerun says so, recomputes it
    and ends with the numbers of an untouched run."""
    import json

    import numpy as np

    from defpert.cli import main

    argv = ["dp", "--dataset", "digits", "--checkpoint", str(digits_cnn), "-k", "3",
            "--limit", "30", "--no-strong", "--json", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)
    path = tmp_path / "a" / "versions" / "test" / "adversarial.npz"
    if spoil == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
        if spoil == "fewer rows":
            images, labels = images[:10], labels[:10]
        else:
            images = np.full_like(images, np.nan)
        np.savez(path, images=images, labels=labels)
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "recomputing adversarial.npz: the saved file failed its check" in captured.err
    again = json.loads(captured.out)
    assert again["accuracy"] == first["accuracy"]


@pytest.mark.parametrize("damage", ["generator-short", "generator-dtype", "nan-points",
                                    "robust-not-bool", "points-dtype"])  # fmt: skip
def test_a_journal_with_a_damaged_state_is_not_continued(tmp_path, damage):
    """A journal is read back only when every piece can be trusted: a generator state of
    the wrong length or type, non-finite points or verdicts of another type mean starting
    the cascade over, never a traceback or a wrong number."""
    x = torch.rand(4, 1, 8, 8)
    good = store.CascadeState(["apgd-ce"], x.clone(), torch.tensor([True, False, True, True]),
                              {"clean": 1, "apgd-ce": 0}, {"apgd-ce": 1.5},
                              torch.Generator().manual_seed(3).get_state())  # fmt: skip
    assert good.continues(x, ["apgd-ce", "square"])
    journal = store.FileJournal(tmp_path / "strong-x.journal.npz")
    bad = store.CascadeState(**{**good.__dict__})
    if damage == "generator-short":
        bad.generator = good.generator[:100]
    elif damage == "generator-dtype":
        bad.generator = good.generator.to(torch.int64)
    elif damage == "nan-points":
        bad.worst = good.worst.clone()
        bad.worst[2, 0, 3, 3] = float("nan")
    elif damage == "robust-not-bool":
        bad.robust = good.robust.to(torch.float32)
    else:
        bad.worst = good.worst.double()
    journal.write(bad)
    back = journal.read()
    assert back is None or not back.continues(x, ["apgd-ce", "square"])
