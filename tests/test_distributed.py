"""torchrun with 2 processes (gloo, CPU) gives a single process's results, element for element."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

DP_ARGS = ["dp", "--dataset", "digits", "--defense", "all", "--inner-steps", "3", "--strong-limit", "60",
           "--strong-steps", "10", "--strong", "quick", "--square-queries", "20", "--adaptive-limit", "10",
           "--json", "--no-progress"]  # fmt: skip


def defpert(*argv: str, processes: int = 1) -> subprocess.CompletedProcess[str]:
    launcher = (
        ["-m", "torch.distributed.run", "--nproc-per-node", str(processes), "-m", "defpert"]
        if processes > 1
        else ["-m", "defpert"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process, as torchrun sets
    done = subprocess.run(
        [sys.executable, *launcher, *argv], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_two_processes_give_the_single_process_results(digits_cnn, tmp_path):
    one = defpert(*DP_ARGS, "--checkpoint", str(digits_cnn), "--out", str(tmp_path / "one"))
    two = defpert(
        *DP_ARGS, "--checkpoint", str(digits_cnn), "--out", str(tmp_path / "two"), processes=2
    )
    results_one, results_two = json.loads(one.stdout), json.loads(two.stdout)
    assert [r["accuracy"] for r in results_one] == [r["accuracy"] for r in results_two]
    assert results_one[0]["accuracy"]["original_attacked"] < results_one[0]["accuracy"]["original"]
    saved = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npz"))
    assert (
        len(saved) == 17
    )  # robustify's two variants add their undo-then-attack points; original, adversarial, strong, 2 per defense (defended and attacked, or defended and defended-adversarial)
    for rel in saved:
        a, b = np.load(tmp_path / "one" / rel), np.load(tmp_path / "two" / rel)
        assert np.array_equal(a["images"], b["images"]), rel
        assert np.array_equal(a["labels"], b["labels"]), rel
    # only rank 0 wrote: no leftover temporary files, one metrics file
    assert not list((tmp_path / "two").rglob("*.tmp"))
    assert two.stdout.count('"defense":') == 6  # printed once, not once per process


def test_distributed_training_matches_single_process(tmp_path):
    args = ["train", "--dataset", "digits", "--epochs", "10", "--no-progress"]
    defpert(*args, "--out", str(tmp_path / "one"))
    defpert(*args, "--out", str(tmp_path / "two"), processes=2)
    acc = {
        n: json.loads(Path(tmp_path / n / "metrics.json").read_text())["test_accuracy"]
        for n in ("one", "two")
    }
    assert acc["one"] > 0.9 and acc["two"] > 0.9
    assert abs(acc["one"] - acc["two"]) <= 0.03  # same seed and global batch: within noise


def _saved_as_rank_sees_it(rank: int, port: int, runs: list[str], out: str) -> None:
    """One rank of a 2-rank gloo group: asks its own run directory for a saved version."""
    import datetime

    import torch
    import torch.distributed as dist

    from defpert.study.store import Store

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    try:
        store = Store(Path(runs[rank]), "test", torch.zeros(2, dtype=torch.long), {"same": 1})
        found = store.saved("original") is not None
        Path(out, f"rank{rank}").write_text(str(found))
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_rank_0s_view_of_what_is_saved(tmp_path):
    """A rank that sees a saved file rank 0 does not (rank 0 wrote it a moment before this
    rank looked, as under load) must still compute it with rank 0: one skipped collective
    deadlocks the run. Here the two ranks look at different directories, one holding the
    file, so their disks disagree for certain."""
    import socket

    import torch
    import torch.multiprocessing as mp

    from defpert.study.store import Store, save_version

    runs = [tmp_path / "rank0-run", tmp_path / "rank1-run"]
    for run in runs:
        Store(run, "test", torch.zeros(2, dtype=torch.long), {"same": 1})  # stamps it
    save_version(runs[1] / "versions" / "test" / "original.npz", torch.zeros(2, 1, 8, 8),
                 torch.zeros(2, dtype=torch.long))  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_saved_as_rank_sees_it, args=(port, [str(r) for r in runs], str(tmp_path)), nprocs=2)
    assert (tmp_path / "rank0").read_text() == "False"
    assert (tmp_path / "rank1").read_text() == "False"  # rank 0's view, not its own disk's
