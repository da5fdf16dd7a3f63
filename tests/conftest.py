"""Shared fixtures: a tiny model trained on scikit-learn's digits (seconds), real MNIST."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from defpert.data.datasets import Split, default_data_dir, fetch, load_split
from defpert.models import build_model


def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Default models and caches go to a temporary directory, never the user's.

    The engine's chunk size is pinned to 64: tests that compare two processes' arrays must
    not depend on what two calibrations on a busy machine chose (tests/test_calibrate.py
    checks the calibration itself).
    """
    if "DEFPERT_DATA" not in os.environ:  # keep using the user's fetched datasets
        monkeypatch.setenv("DEFPERT_DATA", str(default_data_dir()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("DEFPERT_CHUNK", "64")


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _isolate(monkeypatch, tmp_path_factory)


@pytest.fixture(scope="session")
def isolated_environment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[], AbstractContextManager[None]]:
    """The environment every test runs in, for a fixture wider than one test (which runs
    before the per-test one): ``with isolated_environment(): ...``."""

    @contextmanager
    def enter() -> Iterator[None]:
        with pytest.MonkeyPatch.context() as mp:
            _isolate(mp, tmp_path_factory)
            yield

    return enter


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    """The suite, and the commands it starts, run on one CPU thread: its small models gain
    little from more, a shared machine makes more 2-3x slower (``defpert.runtime.threads``), and
    trained weights depend on the count, so two processes of one test must agree on it.
    ``tests/test_threads.py`` checks the load-following count itself."""
    from defpert.runtime import threads

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(threads.ENV, "1")
        threads.configure()
        yield


@pytest.fixture(scope="session")
def digits_test() -> Split:
    return load_split("digits", "test")


@pytest.fixture(scope="session")
def digits_model() -> torch.nn.Module:
    """A small MLP on the 8x8 digits, ~97 % test accuracy, trained in about a second."""
    train = load_split("digits", "train")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("mlp", (1, 8, 8), 10, mean=0.3, std=0.4)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            order = torch.randperm(len(train), generator=g)
            for i in range(0, len(train), 64):
                idx = order[i : i + 64]
                loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    return model


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Real MNIST, fetched by the project's own fetcher (cached across runs)."""
    return fetch("mnist", progress=False)


@pytest.fixture(scope="session")
def digits_cnn(
    tmp_path_factory: pytest.TempPathFactory,
    isolated_environment: Callable[[], AbstractContextManager[None]],
) -> Path:
    """A checkpoint directory: the zoo's cnn trained 5 epochs on the digits (seconds)."""
    from defpert.cli import main

    out = tmp_path_factory.mktemp("digits-cnn")
    argv = ["train", "--dataset", "digits", "--epochs", "5", "--out", str(out), "--no-progress"]
    with isolated_environment():
        assert main(argv) == 0
    return out
