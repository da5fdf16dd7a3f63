"""The CPU thread count follows the cores other programs leave free, and never the results."""

from __future__ import annotations

import pytest
import torch

from defpert.attacks import pgd
from defpert.cli import main
from defpert.core.threat import L2Ball, LinfBall
from defpert.runtime import threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch):
    """Each test starts without a watch and leaves PyTorch's thread count as it found it."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_watch", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV, raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("load", "own", "expected"),
    [
        (0.1, 0.0, 2),  # a quiet machine: every core
        (1.0, 0.0, 1),  # one busy job beside us: the free core
        (3.0, 2.0, 1),  # our two threads and one other job
        (2.0, 2.0, 2),  # only our own work
        (6.0, 0.0, 1),  # overloaded: still one thread
    ],
)
def test_free_cores_leave_other_programs_their_cores(load, own, expected):
    assert threads.free_cores(2, load, own) == expected


def test_the_count_follows_the_load_as_it_changes(monkeypatch):
    load = {"now": 0.0}
    clock = {"now": 1000.0}
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "load_average", lambda: load["now"])
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(threads.time, "process_time", lambda: 0.0)  # this process idle
    threads.configure()
    assert threads.adaptive() and torch.get_num_threads() == 2

    load["now"] = 1.0  # another program starts
    threads.adapt()
    assert torch.get_num_threads() == 2, "looked again before INTERVAL had passed"
    clock["now"] += threads.INTERVAL
    threads.adapt()
    assert torch.get_num_threads() == 1

    load["now"] = 0.0  # and stops
    clock["now"] += threads.INTERVAL
    threads.adapt()
    assert torch.get_num_threads() == 2


def test_a_fixed_count_is_kept_whatever_the_load(monkeypatch):
    monkeypatch.setattr(threads, "load_average", lambda: 100.0)
    threads.configure(2)
    assert torch.get_num_threads() == 2 and not threads.adaptive()
    monkeypatch.setenv(threads.ENV, "2")
    threads.configure()
    assert torch.get_num_threads() == 2 and not threads.adaptive()
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads.configure()
    assert not threads.adaptive()


def test_the_engine_and_the_attacks_look_at_the_load_between_chunks(monkeypatch, digits_model):
    from defpert.attacks import StrongConfig, strong_attack  # noqa: F401  (import cost outside)
    from defpert.data.datasets import load_split

    looks = {"n": 0}
    monkeypatch.setattr(threads, "adapt", lambda: looks.__setitem__("n", looks["n"] + 1))
    test = load_split("digits", "test").head(150)
    pgd(digits_model, test.images, test.labels, threat=LinfBall(0.1), steps=2, step_size=0.05,
        batch_size=64)  # fmt: skip
    assert looks["n"] == 3  # one look per chunk of 64 of the 150

    from defpert.attacks._common import logits_in_chunks

    looks["n"] = 0
    logits_in_chunks(digits_model, test.images, 64)
    assert looks["n"] == 3


@pytest.mark.parametrize("threat", [LinfBall(0.3), L2Ball(2.5)], ids=["linf", "l2"])
def test_pgd_points_do_not_depend_on_the_thread_count(threat, mnist_dir):
    from defpert.data.datasets import load_split
    from defpert.models import load_checkpoint

    model, _ = load_checkpoint("shipped:mnist-cnn-pgd")
    test = load_split("mnist", "test", progress=False).head(128)
    points = []
    for count in (1, 2):
        torch.set_num_threads(count)
        points.append(pgd(model, test.images, test.labels, threat=threat, steps=10,
                          step_size=threat.eps / 4, batch_size=64))  # fmt: skip
    assert torch.equal(points[0], points[1])


def test_training_keeps_every_core_whatever_the_load(monkeypatch):
    """The weights depend on the thread count (the weight gradient sums over the batch), so
    the same command must train at the same count on a busy machine as on a quiet one."""
    from defpert.train import TrainConfig, recipe, train

    config = TrainConfig(dataset="digits", model="cnn", seed=0,
                         **recipe("none", epochs=1, batch_size=None, lr=None, lr_schedule=None,
                                  adv_warmup=None))  # fmt: skip
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "load_average", lambda: 100.0)  # very busy
    threads.configure()
    assert torch.get_num_threads() == 1  # attacks would take the one free thread
    busy = train(config, out=None, progress=False).model.state_dict()
    assert torch.get_num_threads() == 1  # and get it back after training
    threads.configure(2)
    quiet = train(config, out=None, progress=False).model.state_dict()
    assert all(torch.equal(busy[k], quiet[k]) for k in busy)


@pytest.mark.parametrize(
    ("argv_tail", "env", "message"),
    [
        (["--threads", "0"], {}, "--threads must be at least 1, got 0"),
        ([], {threads.ENV: "two"}, "DEFPERT_THREADS must be a positive whole number, got 'two'"),
    ],
)
def test_a_bad_thread_count_is_refused_in_one_line(argv_tail, env, message, monkeypatch, capsys,
                                                   tmp_path):  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "m")]
    assert main(argv + argv_tail) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"defpert: error: {message}"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("name", "default", "given"),
                         [("MKL_CBWR", "AUTO,STRICT", None), ("MKL_CBWR", "AUTO,STRICT", "COMPATIBLE"),
                          ("OMP_WAIT_POLICY", "PASSIVE", None), ("OMP_WAIT_POLICY", "PASSIVE", "ACTIVE")])  # fmt: skip
def test_reproducible_and_load_friendly_settings_are_made_unless_the_user_chose(
    name, default, given
):
    """MKL's strict mode: without it, MKL's products on AVX-512 CPUs follow the thread count
    (see above). Sleeping OpenMP waits: spinning ones hold up training beside other work."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != name}
    if given:
        env[name] = given
    code = f"import os, defpert; print(os.environ[{name!r}])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    assert out == (given or default)
