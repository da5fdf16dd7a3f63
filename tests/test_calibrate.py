"""The engine's CPU chunk size is measured once per machine and model, cached, overridable."""

import json

import pytest
import torch

from defpert.attacks import pgd
from defpert.core.threat import LinfBall
from defpert.errors import DefpertError
from defpert.runtime import calibrate


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Calibration on (no DEFPERT_CHUNK), an empty cache and in-process memory, a fake
    measurement."""
    monkeypatch.delenv("DEFPERT_CHUNK", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(calibrate, "_chosen", {})
    calls = []

    def fake(model, shape, device, candidates=calibrate.CANDIDATES, seconds=0.4, rounds=5):
        calls.append(tuple(shape))
        return {32: 100.0, 64: 250.0, 128: 400.0, 256: 300.0, 512: 120.0}

    monkeypatch.setattr(calibrate, "measure", fake)
    return calls


def test_the_fastest_measured_chunk_is_chosen_cached_and_reused(measuring, digits_model):
    cpu = torch.device("cpu")
    assert calibrate.chunk_size(digits_model, (1, 8, 8), cpu) == 128
    assert calibrate.chunk_size(digits_model, (1, 8, 8), cpu) == 128
    assert measuring == [(1, 8, 8)]  # measured once in this process
    calibrate._chosen.clear()  # a new process: the cache file answers
    assert calibrate.chunk_size(digits_model, (1, 8, 8), cpu) == 128
    assert measuring == [(1, 8, 8)]
    cache = json.loads((calibrate.default_cache_dir() / calibrate.CACHE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["chunk"] == 128 and entry["image_steps_per_second"]["128"] == 400
    assert "model" in entry["cpu"] and "avx2" in entry["cpu"]
    # another input shape (another model's activations) is measured on its own
    calibrate.chunk_size(digits_model, (1, 8, 9), cpu)
    assert measuring == [(1, 8, 8), (1, 8, 9)]


def test_the_engine_uses_the_calibrated_chunk(measuring, digits_model, digits_test):
    x, y = digits_test.images[:20], digits_test.labels[:20]
    pgd(digits_model, x, y, threat=LinfBall(0.1), steps=1, step_size=0.05)
    assert measuring == [(1, 8, 8)]


def test_an_environment_override_wins_and_is_checked(measuring, digits_model, monkeypatch):
    monkeypatch.setenv("DEFPERT_CHUNK", "48")
    assert calibrate.chunk_size(digits_model, (1, 8, 8), torch.device("cpu")) == 48
    assert measuring == []
    monkeypatch.setenv("DEFPERT_CHUNK", "lots")
    with pytest.raises(DefpertError, match="DEFPERT_CHUNK must be a positive whole number"):
        calibrate.chunk_size(digits_model, (1, 8, 8), torch.device("cpu"))


def test_real_measurement_reports_every_candidate(digits_model):
    rates = calibrate.measure(digits_model, (1, 8, 8), torch.device("cpu"), (16, 64), 0.03)
    assert set(rates) == {16, 64} and all(r > 0 for r in rates.values())


def test_a_choice_measured_on_a_busier_machine_is_measured_again_when_quieter(
    measuring, digits_model, monkeypatch
):
    cpu = torch.device("cpu")
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 1.5)  # others share the CPU
    assert calibrate.chunk_size(digits_model, (1, 8, 8), cpu) == 128
    cache_file = calibrate.default_cache_dir() / calibrate.CACHE_FILE
    (entry,) = json.loads(cache_file.read_text()).values()
    assert entry["load_per_core"] == 1.5
    calibrate._chosen.clear()
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 1.2)  # about as busy: reused
    calibrate.chunk_size(digits_model, (1, 8, 8), cpu)
    assert len(measuring) == 1
    calibrate._chosen.clear()
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 0.1)  # quiet: measured again
    calibrate.chunk_size(digits_model, (1, 8, 8), cpu)
    assert len(measuring) == 2
    (entry,) = json.loads(cache_file.read_text()).values()
    assert entry["load_per_core"] == 0.1
    calibrate._chosen.clear()
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 3.0)  # busy again: quiet one kept
    calibrate.chunk_size(digits_model, (1, 8, 8), cpu)
    assert len(measuring) == 2


def test_a_cached_choice_of_unknown_load_is_measured_again(measuring, digits_model, monkeypatch):
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 2.0)
    key = calibrate._key(digits_model, (1, 8, 8))
    cache_file = calibrate.default_cache_dir() / calibrate.CACHE_FILE
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({key: {"chunk": 512}}))  # an older entry: no load
    assert calibrate.chunk_size(digits_model, (1, 8, 8), torch.device("cpu")) == 128
    assert len(measuring) == 1


def test_the_load_per_core_counts_the_cores_this_process_may_use(monkeypatch):
    # Under a CPU affinity mask the machine's core count overstates what is free to us.
    monkeypatch.setattr(calibrate, "load_average", lambda: 3.0)
    monkeypatch.setattr(calibrate, "available_cores", lambda: 2)
    monkeypatch.setattr(calibrate.os, "cpu_count", lambda: 64)
    assert calibrate.load_per_core() == 1.5


@pytest.mark.parametrize("content", ["[]", '"a string"', "{not json", '{"k": []}'])
def test_an_unusable_cache_means_measuring_again(measuring, digits_model, content):
    cache_file = calibrate.default_cache_dir() / calibrate.CACHE_FILE
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(content)
    assert calibrate.chunk_size(digits_model, (1, 8, 8), torch.device("cpu")) == 128
    assert len(measuring) == 1
    assert isinstance(json.loads(cache_file.read_text()), dict)  # replaced by a usable one
