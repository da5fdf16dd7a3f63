"""Stored results are reused only by the same settings, data, weights *and code*."""

from __future__ import annotations

from defpert import rq1, store
from defpert.reproduce import _stage
from defpert.rq1 import DPConfig, run_dp


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
