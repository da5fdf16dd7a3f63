"""The redesign changes no number: the fast subset of tools/reference_outputs.py, run with
this checkout's code and with the reference commit's (tests/reference_commit.txt), gives
the same digest: every accuracy, every count, every saved array and weight, bit for bit,
on this machine. Fields recorded since (new keys inside a file's JSON) are additions, not
changes; a number the reference has must be there, equal."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (ROOT / "tests" / "reference_commit.txt").read_text().split()[0]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "reference_outputs", ROOT / "tools" / "reference_outputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_source(into: Path) -> Path:
    """The reference commit's ``src`` tree, unpacked into ``into``; skips without history."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout: the reference commit's code cannot be read")
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{REFERENCE}^{{commit}}"],
                           capture_output=True)  # fmt: skip
    if found.returncode != 0:
        pytest.skip(f"the reference commit {REFERENCE} is not in this clone's history (shallow?)")
    archive = into / "ref.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", REFERENCE, "src"], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def test_every_number_equals_the_reference_commits(monkeypatch):
    tool = _tool()
    with tempfile.TemporaryDirectory() as tmp:
        ref_src = _reference_source(Path(tmp))
        (Path(tmp) / "new").mkdir()
        (Path(tmp) / "ref").mkdir()
        new = tool.run("fast", Path(tmp) / "new")
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join([str(ref_src), os.environ.get("PYTHONPATH", "")])
        )
        ref = tool.run("fast", Path(tmp) / "ref")
    assert new.keys() == ref.keys() and all(new.values())
    assert tool.differences(ref, new, additions=True) == []


def test_the_digest_sees_a_changed_number():
    tool = _tool()
    a = {"dp": {"metrics.json": {"accuracy": {"defensive": 0.5}}, "x.npz": {"images": "ab"}}}
    b = {"dp": {"metrics.json": {"accuracy": {"defensive": 0.5000001}}, "x.npz": {"images": "ab"}}}
    assert tool.differences(a, a) == []
    assert tool.differences(a, b) == ["/dp/metrics.json/accuracy/defensive: 0.5 != 0.5000001"]
    when = [{"model": "2026-12-04T03:37:53+00:00"}, {"model": "2026-12-04T03:36:46+00:00"}]
    assert tool.differences(*when) == []  # when a model was made is not a number of the study
