"""Fault injection: each kind of file a run reads back, damaged in each way, then the run again.

A finished ``dp`` run (three defenses: proactive, with an inner attack, and reactive; the
strong suite and the adaptive attack) is copied, one of its files is damaged (truncated,
emptied, filled with garbage, one byte changed, fewer rows, NaN pixels, other plausible
numbers, JSON of another type, a number edited), and the command runs again. The rerun
either recomputes what the file held, saying so in one line, and ends with every number
of the untouched run, or refuses in one line with exit 2. Never a traceback, never a wrong
number. The same for a cascade's and a defense's journal, a training state, a checkpoint,
the calibration cache and a ``reproduce`` stage.

``python tests/test_faults.py`` writes the table of cases into docs/errors.md.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from defpert.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"

DP = ["dp", "--dataset", "digits", "-k", "5", "--limit", "16", "--defense", "ce,robustify,hedge",
      "--defense-steps", "3", "--inner-steps", "2", "--strong", "quick", "--strong-limit", "8",
      "--square-queries", "10", "--adaptive-limit", "4", "--adaptive-square-queries", "5",
      "--no-progress", "--json"]  # fmt: skip


# ------------------------------------------------------------------------------ damages


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff" * 40)


def one_byte(path: Path) -> None:
    """One byte in the middle changed: the file may still parse."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_npz(path: Path, change: Callable[[np.ndarray, np.ndarray], tuple]) -> None:
    with np.load(path) as z:
        images, labels = change(z["images"], z["labels"])
    with open(path, "wb") as fh:
        np.savez(fh, images=images, labels=labels)


def fewer_rows(path: Path) -> None:
    _rewrite_npz(path, lambda x, y: (x[:3], y[:3]))


def nan_pixels(path: Path) -> None:
    _rewrite_npz(path, lambda x, y: (np.full_like(x, np.nan), y))


def other_numbers(path: Path) -> None:
    """A well-formed version of the right shape, pixels in [0, 1]: only its digest tells."""
    _rewrite_npz(path, lambda x, y: (np.clip(x + 0.01, 0, 1).astype(x.dtype), y))


def json_list(path: Path) -> None:
    path.write_text("[]")


def json_garbage(path: Path) -> None:
    path.write_text('{"accuracy": 0.5,')


def edited_number(path: Path) -> None:
    """Valid JSON of the right shape with one number changed: only its digest tells."""
    data = json.loads(path.read_text())
    holder = data
    while True:  # the first number, however deep
        key = next(k for k, v in holder.items()
                   if isinstance(v, dict) or (isinstance(v, int | float) and not isinstance(v, bool)))  # fmt: skip
        if not isinstance(holder[key], dict):
            break
        holder = holder[key]
    holder[key] = holder[key] + 1
    path.write_text(json.dumps(data))


NPZ_DAMAGES = [truncate, empty, garbage, one_byte, fewer_rows, nan_pixels, other_numbers]
JSON_DAMAGES = [truncate, empty, json_garbage, json_list, edited_number]

# The files of a finished run that a rerun reads back, each with the damages that apply.
RUN_FILES = {
    "versions/test/adversarial.npz": NPZ_DAMAGES,
    "versions/test/robustify/defensive.npz": [truncate, fewer_rows, nan_pixels, other_numbers],
    "versions/test/hedge/defended-adversarial.npz": [garbage, other_numbers],
    "versions/test/strong-adversarial.npz": [one_byte, other_numbers],
    "versions/test/adversarial.passes.json": JSON_DAMAGES,
    "partial/test/strong-original.json": JSON_DAMAGES,
    "partial/test/strong-robustify.json": [json_list, edited_number],
    "partial/test/adaptive-hedge.json": [truncate, edited_number],
    "partial/test/fingerprint.json": [empty, json_garbage, json_list, edited_number],
    "partial/test/defense-ce.json": [json_garbage, json_list],
    "partial/test/manifest.json": [empty, json_garbage, json_list, edited_number],
    "metrics.json": [garbage, json_list],
}
CASES = [(name, damage) for name, damages in RUN_FILES.items() for damage in damages]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_cnn, isolated_environment):
    """One untouched run and its ``--json`` output."""
    run = tmp_path_factory.mktemp("faults") / "run"
    with isolated_environment():
        code, out, err = _dp(run, digits_cnn)
    assert code == 0, err
    return run, json.loads(out)


def _dp(run: Path, checkpoint: Path, *extra: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*DP, "--checkpoint", str(checkpoint), "--out", str(run), *extra])
    return code, out.getvalue(), err.getvalue()


def _numbers(results: list[dict]) -> list:
    """Every number of a run's results that a reader relies on (not its timings)."""
    return [(r["defense"], r["accuracy"], r["strong"].get("broken_by"),
             r["strong"].get("paired"), r.get("adaptive", {}).get("broken_by"))
            for r in results]  # fmt: skip


def _assert_recomputed_or_refused(code: int, out: str, err: str, expected: list[dict]) -> str:
    assert "Traceback" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("defpert: error: "), err
        return lines[0]
    assert code == 0, err
    assert _numbers(json.loads(out)) == _numbers(expected)
    said = [line for line in err.splitlines() if "recomputing" in line or "left out" in line]
    return said[0] if said else "(rewritten: an output, not read back)"


@pytest.mark.parametrize(("name", "damage"), CASES, ids=[f"{n}-{d.__name__}" for n, d in CASES])
def test_a_damaged_file_of_a_run_is_recomputed_or_refused(name, damage, finished, digits_cnn,
                                                          tmp_path):  # fmt: skip
    source, expected = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    damage(run / name)
    said = _assert_recomputed_or_refused(*_dp(run, digits_cnn), expected)
    if name != "metrics.json":  # an output: rewritten whole, nothing to say
        stem = name.rsplit("/", 1)[-1].split(".")[0]
        assert stem in said, said  # the one line names the file (or the manifest it failed)
    assert f"| `{name}` | {damage.__name__.replace('_', ' ')} |" in DOC.read_text(), (
        "docs/errors.md lacks this case: run python tests/test_faults.py"
    )


@pytest.mark.parametrize("damage", [truncate, empty, garbage], ids=lambda d: d.__name__)
@pytest.mark.parametrize(
    "journal", ["strong-robustify.journal.npz", "robustify/defensive.rows.npz"]
)
def test_a_damaged_journal_is_not_continued(journal, damage, finished, digits_cnn, tmp_path):
    """A journal is what an interrupted run left: damaged, the piece starts over."""
    source, expected = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    piece = {"strong-robustify.journal.npz": run / "partial/test/strong-robustify.json",
             "robustify/defensive.rows.npz": run / "versions/test/robustify/defensive.npz"}[journal]  # fmt: skip
    piece.unlink()  # as if the run had stopped inside it
    path = run / "partial" / "test" / journal
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 half a journal")
    damage(path)
    code, out, err = _dp(run, digits_cnn)
    _assert_recomputed_or_refused(code, out, err, expected)
    assert code == 0


@pytest.mark.parametrize("damage", [json_garbage, json_list, empty], ids=lambda d: d.__name__)
def test_a_damaged_run_config_is_refused_then_cleared_by_overwrite(damage, finished, digits_cnn,
                                                                   tmp_path):  # fmt: skip
    source, expected = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    damage(run / "config.json")
    code, out, err = _dp(run, digits_cnn)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "config.json" in err, err
    assert "--overwrite" in err
    _assert_recomputed_or_refused(*_dp(run, digits_cnn, "--overwrite"), expected)


@pytest.mark.parametrize("damage", [truncate, garbage, empty], ids=lambda d: d.__name__)
def test_a_damaged_training_state_is_refused_then_cleared_by_overwrite(damage, tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--no-progress",
            "--out", str(tmp_path / "m")]  # fmt: skip
    assert main(argv) == 0
    state = tmp_path / "m" / "train-state.pt"
    state.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    damage(state)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-state.pt" in err and "--overwrite" in err, err
    assert main([*argv, "--overwrite"]) == 0
    assert not state.exists()


@pytest.mark.parametrize(("file", "damage"), [("model.safetensors", truncate),
                                              ("model.safetensors", one_byte),
                                              ("model.json", json_garbage),
                                              ("model.json", json_list)],
                         ids=lambda v: getattr(v, "__name__", v))  # fmt: skip
def test_a_damaged_checkpoint_is_refused_in_one_line(file, damage, digits_cnn, tmp_path):
    checkpoint = tmp_path / "ck"
    shutil.copytree(digits_cnn, checkpoint)
    damage(checkpoint / file)
    code, _, err = _dp(tmp_path / "run", checkpoint)
    if file == "model.safetensors" and damage is one_byte and code == 0:
        return  # a changed weight is a valid model of other weights (its digest is in the results)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("content", [b"", b"{bad", b"[]", b'{"k": []}', b'{"k": {"chunk": "x"}}'])
def test_a_damaged_calibration_cache_is_measured_again(content, monkeypatch, tmp_path):
    import torch

    from defpert.models import build_model
    from defpert.runtime import calibrate
    from defpert.runtime.rundir import default_cache_dir

    monkeypatch.delenv("DEFPERT_CHUNK", raising=False)
    cache = default_cache_dir() / calibrate.CACHE_FILE
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(content)
    model = build_model("mlp", (1, 8, 8), 10)
    chunk = calibrate.chunk_size(model, (1, 8, 8), torch.device("cpu"))
    assert isinstance(chunk, int) and chunk >= 1


@pytest.mark.parametrize("damage", [truncate, json_list, edited_number], ids=lambda d: d.__name__)
def test_a_damaged_reproduce_stage_is_recomputed(damage, tmp_path):
    from defpert.study.reproduce import _stage

    said: list[str] = []
    path = tmp_path / "stages" / "sweep.json"
    path.parent.mkdir()
    result = {"accuracy": 0.75, "rows": [1, 2]}
    assert _stage(path, {"eps": 0.1}, lambda: result, said.append, "sweep") == result
    if damage is edited_number:  # the result's own number, not its config
        data = json.loads(path.read_text())
        data["result"]["accuracy"] = 0.95
        path.write_text(json.dumps(data))
    else:
        damage(path)
    calls: list[int] = []
    again = _stage(path, {"eps": 0.1}, lambda: calls.append(1) or result, said.append, "sweep")
    assert again == result and calls == [1]  # recomputed, not reused
    assert any("sweep.json" in line for line in said), said


# ------------------------------------------------------------------------------ the doc


def write_doc() -> None:
    """Run every case of a run's files and write their table into docs/errors.md."""
    import os
    import tempfile

    from defpert.cli import main as cli_main

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ.setdefault("DEFPERT_CHUNK", "64")
        os.environ["XDG_CACHE_HOME"] = str(base / "cache")
        checkpoint = base / "ck"
        assert cli_main(["train", "--dataset", "digits", "--epochs", "5", "--no-progress",
                         "--out", str(checkpoint)]) == 0  # fmt: skip
        code, out, err = _dp(base / "run", checkpoint)
        assert code == 0, err
        expected = json.loads(out)
        for name, damage in CASES:
            run = base / "case"
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base / "run", run)
            damage(run / name)
            said = _assert_recomputed_or_refused(*_dp(run, checkpoint), expected)
            said = said.replace(str(base), "DIR").replace("|", "\\|")
            rows.append(f"| `{name}` | {damage.__name__.replace('_', ' ')} | {said} |")
    section = (
        f"{BEGIN}\n## Damaged files of a run\n\n"
        "Every row was run by `python tests/test_faults.py`, which wrote this section: a file\n"
        "of a finished `dp` run damaged, then the same command again. Each rerun ended with the\n"
        "untouched run's numbers (exit 0) after the line shown; `tests/test_faults.py` also\n"
        "damages journals, `config.json` (refused until `--overwrite`), a training state\n"
        "(likewise), a checkpoint (refused), the calibration cache (measured again) and a\n"
        "`reproduce` stage (recomputed).\n\n"
        "| file | damage | what the rerun says (stderr) |\n|---|---|---|\n"
        + "\n".join(rows) + f"\n{END}\n"
    )  # fmt: skip
    text = DOC.read_text()
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)
    print(f"wrote {len(rows)} rows into {DOC}")


if __name__ == "__main__":
    sys.exit(write_doc())
