"""The ``defpert`` command: outputs, files written, and one-line errors with exit status 2."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from defpert.cli import main
from defpert.core.evaluate import correct
from defpert.data.datasets import DATASETS
from defpert.data.idx import encode_idx
from defpert.defenses.methods import DefendedModel
from defpert.models import build_model, load_checkpoint, save_checkpoint
from defpert.study.dp import DPConfig


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dp_on_checkpoint(capsys, tmp_path, checkpoint):
    return run(
        capsys,
        "dp",
        "--dataset",
        "digits",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "o"),
    )


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, isolated_environment):
    out = tmp_path_factory.mktemp("run") / "nested" / "digits"  # parents created as needed
    with isolated_environment():
        code = main(
            ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "15", "--out", str(out)]
        )
    assert code == 0
    return out


def test_train_writes_checkpoint_card_and_metrics(digits_run):
    for name in ("model.safetensors", "model.json", "metrics.json"):
        assert (digits_run / name).is_file()
    metrics = json.loads((digits_run / "metrics.json").read_text())
    card = json.loads((digits_run / "model.json").read_text())
    assert metrics["test_accuracy"] > 0.9
    assert card["dataset"] == "digits" and card["architecture"] == "mlp" and card["epochs"] == 15
    assert {"torch", "numpy", "python"} <= set(card["library_versions"])
    assert card["accuracy"]["test"] == metrics["test_accuracy"]


def test_train_prints_test_accuracy(capsys, tmp_path):
    code, out, err = run(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--model",
        "lenet",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "r"),
        "--progress",
    )
    assert code == 0 and "test accuracy" in out
    # with progress (a terminal's default) said before the data load and the first batch, which take a while on a busy machine
    assert err.startswith(f"training lenet on digits for 1 epoch into {tmp_path / 'r'}\n")


def test_dp_json_and_saved_versions(capsys, digits_run, tmp_path):
    out_dir = tmp_path / "dp"
    code, out, _ = run(
        capsys,
        "dp",
        "--dataset",
        "digits",
        "--checkpoint",
        str(digits_run),
        "-p",
        "linf",
        "-k",
        "5",
        "-e",
        "0.2",
        "-a",
        "0.05",
        "--limit",
        "60",
        "--strong-limit",
        "30",
        "--strong-steps",
        "10",
        "--strong-restarts",
        "1",
        "--strong",
        "quick",
        "--square-queries",
        "30",
        "--defense",
        "hedge",
        "--adaptive-limit",
        "10",
        "--out",
        str(out_dir),
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["threat"] == {
        "norm": "linf",
        "eps": 0.2,
        "step_size": 0.05,
        "steps": 5,
        "random_start": False,
        "budget_from": "defended",
    }
    assert result["defense"] == "hedge" and result["n"] == 60
    acc = result["accuracy"]
    for key in (
        "original",
        "original_attacked",
        "defensive",
        "original_attacked_strong",
        "defended_adversarial",
        "bare_strong_adaptive_examples",
        "adaptive",
    ):
        assert 0.0 <= acc[key] <= 1.0
    # a reactive defense has no attacked-without-the-defense number (no threat model)
    assert "defensive_attacked" not in acc and "defensive_attacked_strong" not in acc
    assert acc["original_attacked"] < acc["original"]
    for name in ("original", "adversarial", "hedge/defensive", "hedge/defended-adversarial"):
        with np.load(out_dir / "versions" / "test" / f"{name}.npz") as f:
            assert f["images"].shape == (60, 1, 8, 8) and f["labels"].shape == (60,)
    assert (out_dir / "metrics.json").is_file() and (out_dir / "config.json").is_file()
    # the strong suite's points are saved, and the adaptive attack on the reactive defense
    # counts them: its accuracy is never above the defense's on those points
    with np.load(out_dir / "versions" / "test" / "strong-adversarial.npz") as f:
        strong_x, strong_y = torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
    assert strong_x.shape == (30, 1, 8, 8)
    model, _ = load_checkpoint(digits_run)
    d = DPConfig(norm="linf", eps=0.2, steps=5, step_size=0.05).defense("hedge")
    on_strong = correct(DefendedModel(model, d, mode="bpda"), strong_x[:10], strong_y[:10])
    assert acc["adaptive"] <= float(on_strong.float().mean())
    stages = list(result["adaptive"]["broken_by"])  # in cascade order, until none is left
    assert stages[:2] == ["clean", "transfer-weak"]
    same = result["adaptive"]["same_examples"]  # the bare model on the adaptive examples
    assert acc["bare_strong_adaptive_examples"] == same["original_attacked_strong"]


def test_dp_table(capsys, digits_run, tmp_path):
    code, out, _ = run(
        capsys,
        "dp",
        "--dataset",
        "digits",
        "--checkpoint",
        str(digits_run),
        "-p",
        "l2",
        "-k",
        "5",
        "-e",
        "1.0",
        "-a",
        "0.3",
        "--limit",
        "40",
        "--no-strong",
        "--defense",
        "ce,margin",
        "--out",
        str(tmp_path / "dp"),
    )
    assert code == 0
    assert "defense: ce" in out and "defense: margin" in out and "weak attack" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["train", "--dataset", "digits", "--model", "resnet"], "unknown model 'resnet'"),
        (["train", "--dataset", "digits", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "--dataset", "digits", "--epochs", "-2"], "--epochs must be at least 1"),
        (["train", "--epochs", "three"], "invalid int value"),
        (["dp", "--dataset", "digits", "-p", "l3"], "unknown norm 'l3'"),
        (["dp", "--dataset", "digits", "--defense", "magic"], "unknown defense 'magic'"),
        (["dp", "--dataset", "digits", "-e", "0"], "eps must be a positive number"),
        (["dp", "--dataset", "digits", "-e", "-0.1"], "eps must be a positive number"),
        (["dp", "--dataset", "digits", "-p", "linf", "-e", "2.5"], "did you mean an L2 radius"),
        (["dp", "--dataset", "digits", "-k", "0"], "steps must be at least 1"),
        (["dp", "--dataset", "digits", "-a", "0"], "step size must be positive"),
        (["dp", "--dataset", "digits", "--limit", "0"], "--limit must be at least 1"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, message):
    code, _, err = run(
        capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] != "nonsense" else [])
    )
    assert_one_line_error(code, err, message)


def test_missing_and_foreign_checkpoint(capsys, tmp_path):
    code, _, err = dp_on_checkpoint(capsys, tmp_path, tmp_path / "none")
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "o").exists()  # no empty run directory left behind
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.pt").write_bytes(b"junk")
    code, _, err = dp_on_checkpoint(capsys, tmp_path, tmp_path / "foreign")
    assert_one_line_error(code, err, "not a defpert checkpoint")


def test_checkpoint_of_another_input_shape(capsys, tmp_path):
    card = {
        "dataset": "mnist",
        "architecture": "mlp",
        "input_shape": [1, 28, 28],
        "num_classes": 10,
    }
    save_checkpoint(build_model("mlp", (1, 28, 28), 10), tmp_path / "ck", card)
    code, _, err = dp_on_checkpoint(capsys, tmp_path, tmp_path / "ck")
    assert_one_line_error(code, err, "made for inputs of shape (1, 28, 28)")


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run(
        capsys, "train", "--dataset", "digits", "--epochs", "1", "--out", str(blocker / "sub")
    )
    assert_one_line_error(code, err, "cannot create directory")


def test_corrupt_data_directory(capsys, tmp_path):
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for name in DATASETS["mnist"].sha256:
        shape = (10, 28, 28) if "images" in name else (10,)
        blob = encode_idx(np.zeros(shape, dtype=np.uint8))
        (data / name).write_bytes(blob[:-5] if name.startswith("t10k-images") else blob)
    code, _, err = run(
        capsys,
        "train",
        "--dataset",
        "mnist",
        "--epochs",
        "1",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "is truncated")


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "defpert",
            "dp",
            "-p",
            "linf",
            "-e",
            "2.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_default_output_directories_are_named_by_the_settings(
    digits_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    common = ["dp", "--dataset", "digits", "--checkpoint", str(digits_run), "--limit", "10",
              "--no-strong", "-k", "2"]  # fmt: skip
    assert main([*common, "-p", "linf", "-e", "0.2", "-a", "0.05"]) == 0
    assert main([*common, "-p", "l2", "-e", "1.0", "-a", "0.1", "--json"]) == 0  # no collision
    assert (tmp_path / "runs/dp-digits-linf-eps0.2-k2/metrics.json").is_file()
    assert (tmp_path / "runs/dp-digits-l2-eps1-k2/metrics.json").is_file()
    assert f"model: {digits_run}" in capsys.readouterr().err  # the checkpoint used is named
    # the other budget convention gets its own directory and borrows the first run's attacks
    assert main([*common, "-p", "linf", "-e", "0.2", "-a", "0.05", "--budget-from", "original",
                 "--lend-from", "runs/dp-digits-linf-eps0.2-k2"]) == 0  # fmt: skip
    assert (tmp_path / "runs/dp-digits-linf-eps0.2-k2-from-original/metrics.json").is_file()
    assert "lent 2 finished pieces" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "warning"),
    [
        (["-e", "0.2", "-a", "5"], "--step-size 5 is above 2.5 x eps (0.5)"),
        (["-p", "l2", "-e", "1000", "-a", "0.5"], "--eps 1000 exceeds the images' L2 diameter (8)"),
        (["--limit", "20000"], "--limit 20000 is above the test split's 360 images; using all 360"),
    ],
    ids=["step-above-ball", "l2-beyond-diameter", "limit-above-split"],
)  # fmt: skip
def test_doubtful_settings_warn_in_one_line_and_run(capsys, digits_run, tmp_path, extra, warning):
    code, _, err = run(capsys, "dp", "--dataset", "digits", "--checkpoint", str(digits_run),
                       "--no-strong", "-k", "2", *extra, "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 0
    said = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(said) == 1 and warning in said[0], err


def test_sensible_settings_give_no_warning(capsys, digits_run, tmp_path):
    code, _, err = run(capsys, "dp", "--dataset", "digits", "--checkpoint", str(digits_run),
                       "--no-strong", "-k", "2", "--limit", "50", "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        (["-e", "0.2", "--defense", "robustify", "--defense-eps", "0.2"], True),  # reach 0.4
        (["-e", "0.2", "--defense", "robustify", "--defense-eps", "0.1"], False),  # reach 0.3
        (["-e", "0.2", "--defense", "ce", "--budget-from", "original"], False),  # stays at 0.2
        (["-e", "0.2", "--defense", "hedge"], False),  # reactive: no defended point
        (["-p", "l2", "-e", "1.0", "-a", "0.1", "--defense", "ce"], False),  # another norm
    ],
    ids=["beyond", "within", "from-original", "reactive", "other-norm"],
)
def test_a_defense_reaching_beyond_the_training_radius_is_warned_of(
    capsys, digits_run, tmp_path, extra, warned
):
    robust = tmp_path / "robust"
    shutil.copytree(digits_run, robust)
    card = json.loads((robust / "model.json").read_text())
    card["threat_trained_against"] = {"norm": "linf", "eps": 0.3, "steps": 10, "step_size": 0.075}
    (robust / "model.json").write_text(json.dumps(card))
    code, _, err = run(capsys, "dp", "--dataset", "digits", "--checkpoint", str(robust),
                       "--no-strong", "-k", "2", "--limit", "20", "--defense-steps", "2",
                       "--inner-steps", "1", *extra, "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 0, err
    said = [
        line for line in err.splitlines() if "beyond the linf 0.3 this model was trained" in line
    ]
    assert len(said) == int(warned), err
    if warned:
        assert said[0].startswith("warning: ") and "eps + eps_def = 0.4" in said[0]


def test_a_preempt_model_is_trained_for_the_combined_radius_and_not_warned_of():
    """``--adversarial preempt`` attacks within eps of a point eps_def from the natural image:
    its card's radius reaches eps + eps_def, so robustify at those budgets stays inside it."""
    from defpert.study.dp import DPConfig

    config = DPConfig(norm="linf", eps=0.1, step_size=0.005, steps=20, defenses=("robustify",))
    preempt = {"norm": "linf", "eps": 0.1, "defense_eps": 0.1}
    assert config.beyond_training_radius(preempt) is None
    assert "eps + eps_def = 0.2" in (
        config.beyond_training_radius({"norm": "linf", "eps": 0.1}) or ""
    )
    wider = DPConfig(norm="linf", eps=0.2, step_size=0.01, steps=20, defenses=("robustify",))
    assert "beyond the linf 0.2" in (wider.beyond_training_radius(preempt) or "")


def test_a_rerun_says_it_resumes_and_a_fresh_run_does_not(capsys, digits_run, tmp_path):
    argv = ["dp", "--dataset", "digits", "--checkpoint", str(digits_run), "--no-strong",
            "-k", "2", "--limit", "30", "--out", str(tmp_path / "o")]  # fmt: skip
    code, first_out, first = run(capsys, *argv)
    assert code == 0 and "resuming" not in first
    code, again_out, again = run(capsys, *argv)
    assert code == 0 and "resuming: 4 finished pieces" in again  # original, adversarial, ce x 2
    assert again_out == first_out  # the same table


def _stderr_of(argv, *, terminal: bool) -> str:
    """Run the CLI with stderr on a pseudo-terminal (as a user sees it) or on a pipe."""
    import os
    import pty

    cmd = [sys.executable, "-m", "defpert", *argv]
    if not terminal:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    import fcntl
    import struct
    import termios

    try:
        leader, follower = pty.openpty()
    except OSError:  # a container without pseudo-terminals
        pytest.skip("no pseudo-terminal available")
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is done writing
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait() == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_show_on_a_terminal_and_not_in_a_pipe(tmp_path):
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--model", "mlp"]
    on_terminal = _stderr_of([*argv, "--out", str(tmp_path / "t")], terminal=True)
    in_pipe = _stderr_of([*argv, "--out", str(tmp_path / "p")], terminal=False)
    assert "epoch 1/2" in on_terminal and "100%" in on_terminal
    assert "epoch 1/2" not in in_pipe and "100%" not in in_pipe


def test_ctrl_c_says_whether_a_rerun_continues(capsys, tmp_path, monkeypatch):
    import importlib

    def ctrl_c(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("defpert.train"), "train", ctrl_c)
    monkeypatch.setattr(importlib.import_module("defpert.data.datasets"), "fetch", ctrl_c)
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "t")]) == 130
    message = capsys.readouterr().err.strip()
    assert message.endswith("run the same command again: what it finished is kept and reused")
    assert main(["data", "fetch", "mnist", "--data-dir", str(tmp_path / "d")]) == 130
    assert capsys.readouterr().err.strip() == "defpert: interrupted"  # nothing to continue


def test_studies_of_other_settings_get_their_own_default_directory(monkeypatch, capsys):
    import importlib

    outs: list[str] = []

    def record(_config, out, **_kw):
        outs.append(out)
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(importlib.import_module("defpert.study.reproduce"), "reproduce", record)
    for argv in (
        ["reproduce", "--quick"],
        ["reproduce"],
        ["reproduce", "--models", "standard,fgsm-rs", "--limit", "2000", "--strong-limit", "500"],
        ["reproduce", "--strong-limit", "500", "--adaptive-limit", "500"],
        ["reproduce", "--defense", "ce,robustify", "--strong", "plus"],
        ["reproduce", "--budget-from", "original"],
    ):
        assert main(argv) == 130
    assert outs[:2] == ["runs/reproduce-mnist-quick", "runs/reproduce-mnist"]  # as before
    assert outs[2] == "runs/reproduce-mnist-standard+fgsm-rs-n2000-strong500"
    assert outs[3] == "runs/reproduce-mnist-strong500-adaptive500"
    assert len(set(outs)) == len(outs)


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`defpert models | head -1`: the reader may close the pipe before defpert writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone
    done = subprocess.run([sys.executable, "-m", "defpert", "models"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141  # as a shell reports a program ended by SIGPIPE


@pytest.mark.parametrize(
    "argv", [["--help"], ["dp", "--help"], ["reproduce", "--help"], ["models"]]
)
def test_help_and_listing_answer_without_loading_pytorch(argv):
    """PyTorch takes seconds to load; a question about the command should not wait for it."""
    probe = ("import sys, contextlib, io\nfrom defpert.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    code = main({argv!r})\n"
             "print(code, 'torch' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["0", "False"], done.stderr


def test_public_names_are_the_functions_whatever_was_imported_first():
    """`from defpert import train` is the function even after the module defpert.train
    was imported (which binds the module on the package)."""
    probe = ("import importlib, types\nimportlib.import_module('defpert.train')\n"
             "import defpert.cli\nfrom defpert import train, TrainConfig, draw_tsne\n"
             "print(callable(train), isinstance(train, types.ModuleType), TrainConfig.__name__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["True", "False", "TrainConfig"], done.stderr


def test_the_dp_table_gives_percentages_with_their_intervals():
    from defpert.study.dp import format_table

    result = {"dataset": "digits", "split": "test", "n": 60, "defense": "ce", "defense_kind": "proactive",
              "threat": {"norm": "linf", "eps": 0.2, "step_size": 0.05, "steps": 5, "budget_from": "defended"},
              "defense_budget": {"eps": 0.2, "steps": 5, "step_size": 0.05},
              "accuracy": {"original": 0.5, "defensive": 1.0, "original_attacked": 0.0,
                           "defensive_attacked": 0.25},
              "strong": {}, "max_from_natural": {}}  # fmt: skip
    table = format_table([result])
    assert "50.0% [37.7, 62.3]" in table and "100.0% [94.0, 100.0]" in table
    assert "0.0% [0.0, 6.0]" in table and "25.0% [15.8, 37.2]" in table
    assert "1-2." not in table and "0.5000" not in table


def test_a_run_longer_than_an_hour_at_the_measured_rate_is_announced(monkeypatch):
    import torch

    from defpert.cli import dp as dp_cli
    from defpert.runtime import calibrate
    from defpert.study.config import DPConfig

    images = torch.zeros(1000, 1, 8, 8)
    config = DPConfig(steps=20, defenses=("ce",))  # 1000 x (20 + (20 + 20)) image-steps
    monkeypatch.setattr(calibrate, "measured_rate", lambda *a: 10.0)
    said = dp_cli.long_run(None, images, config, torch.device("cpu"))
    assert "about 60,000 image-steps, 1.7 hours at this machine's measured 10 image-steps/s" in said
    monkeypatch.setattr(calibrate, "measured_rate", lambda *a: 100.0)  # 10 minutes: no word
    assert dp_cli.long_run(None, images, config, torch.device("cpu")) == ""
    monkeypatch.setattr(calibrate, "measured_rate", lambda *a: 0.0)  # unknown rate: no guess
    assert dp_cli.long_run(None, images, config, torch.device("cpu")) == ""


def test_every_command_is_dispatched_by_its_parser():
    """Each command's parser names its handler (``set_defaults``); the name resolves to a
    function of that command's module, imported only when the command runs."""
    import argparse

    from defpert.cli import build_parser, handler

    parser = build_parser()
    seen = {}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            seen[" ".join(path)] = p.get_default("handler")
            return
        for name, child in subs[0].choices.items():
            walk(child, (*path, name))

    walk(parser, ())
    assert set(seen) == {"data fetch", "models", "train", "dp", "tsne", "sweep", "reproduce"}
    for command, where in seen.items():
        assert where and callable(handler(where)), command
        assert where.split(":")[0].startswith("defpert.cli")
