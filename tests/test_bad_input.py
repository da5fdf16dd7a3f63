"""Every bad input we know of: one line on stderr, exit status 2, no traceback.

The table ``CASES`` is the source of ``docs/errors.md``: each row is run here and its
message must appear in the doc as written. After adding a case, regenerate the doc with
``python tests/test_bad_input.py`` (it runs every case and writes what the user sees).
"""

from __future__ import annotations

import gzip
import io
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from defpert.cli import main
from defpert.data.datasets import DATASETS
from defpert.data.idx import encode_idx
from defpert.errors import DefpertError
from defpert.models import build_model, save_checkpoint

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
CARD = {"dataset": "digits", "architecture": "cnn", "input_shape": [1, 8, 8], "num_classes": 10}


# ----------------------------------------------------------------------------- set-ups


def digits_checkpoint(tmp: Path) -> None:
    save_checkpoint(build_model("cnn", (1, 8, 8), 10), tmp / "ck", CARD)


def mnist_data(mutate: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        folder = tmp / "data" / "mnist"
        folder.mkdir(parents=True)
        for name in DATASETS["mnist"].sha256:
            shape = (10, 28, 28) if "images" in name else (10,)
            blob = encode_idx(np.zeros(shape, dtype=np.uint8))
            (folder / name).write_bytes(mutate(blob) if name.startswith("t10k-images") else blob)
        digits_checkpoint(tmp)
        mnist_card = {**CARD, "dataset": "mnist", "architecture": "mlp", "input_shape": [1, 28, 28]}
        save_checkpoint(build_model("mlp", (1, 28, 28), 10), tmp / "mck", mnist_card)

    return setup


def tampered_shipped(tmp: Path) -> None:
    """A shipped directory whose one checkpoint's weights do not match the index."""
    import json

    from defpert.models import shipped

    digits_checkpoint(tmp)
    root = tmp / "shipped"
    (root / "digits-cnn").mkdir(parents=True)
    for file in ("model.safetensors", "model.json"):
        (root / "digits-cnn" / file).write_bytes((tmp / "ck" / file).read_bytes())
    (root / "index.json").write_text(json.dumps({"digits-cnn": {"sha256": "0" * 64}}))
    shipped.SHIPPED_DIR = root  # the test restores it


def npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        np.savez(tmp / "v.npz", **arrays)
        digits_checkpoint(tmp)

    return setup


def raw_file(content: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "v.npz").write_bytes(content)

    return setup


class RunsCommand:
    """Unpickling this would run a shell command that leaves a file behind."""

    def __reduce__(self):
        return (__import__("os").system, ("touch pwned",))


def pickled_checkpoint(tmp: Path) -> None:
    digits_checkpoint(tmp)
    (tmp / "ck" / "model.safetensors").write_bytes(pickle.dumps({"w": RunsCommand()}))


def card_edit(**changes: object) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        import json

        digits_checkpoint(tmp)
        path = tmp / "ck" / "model.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return setup


def nan_weights(tmp: Path) -> None:
    from safetensors.torch import load_file, save_file

    digits_checkpoint(tmp)
    path = tmp / "ck" / "model.safetensors"
    state = load_file(str(path))
    first = sorted(k for k in state if k.endswith("weight"))[0]
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(path))


def corrupt_train_state(tmp: Path) -> None:
    import json

    from defpert.train import TrainConfig

    (tmp / "o").mkdir()
    config = {"command": "train", **TrainConfig(dataset="digits", epochs=2).settings()}
    (tmp / "o" / "config.json").write_text(json.dumps(config))
    (tmp / "o" / "train-state.pt").write_bytes(b"not a state")


def stopped_dp_run(tmp: Path) -> None:
    """A dp run stopped after it saved the original data and before the attacked data."""
    from defpert.study.store import save_version

    images, labels = torch.from_numpy(PIX[:4]), torch.from_numpy(LAB[:4])
    save_version(tmp / "r" / "versions" / "test" / "original.npz", images, labels)


def other_run(tmp: Path) -> None:
    (tmp / "o").mkdir()
    (tmp / "o" / "config.json").write_text('{"command": "reproduce", "dataset": "mnist"}')


def corrupt_run(content: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "o").mkdir()
        (tmp / "o" / "config.json").write_text(content)

    return setup


D = ["dp", "--dataset", "digits", "--no-strong", "--limit", "20"]
M = ["--data-dir", "{tmp}/data", "--checkpoint", "{tmp}/mck", "--no-strong", "--limit", "5"]
T = ["tsne", "--npz", "{tmp}/v.npz", "--per-class", "2"]
TF = [*T, "--space", "features", "--checkpoint", "{tmp}/ck"]
PIX = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
LAB = np.arange(20) % 10

# (what the user gave, set-up, command line, what the one line says)
CASES: list[tuple[str, Callable[[Path], None] | None, list[str], str]] = [
    # data files
    ("IDX file truncated", mnist_data(lambda b: b[:-5]), ["dp", *M], "is truncated"),
    ("IDX file empty", mnist_data(lambda b: b""), ["dp", *M], "only 0 bytes"),
    (
        "IDX file with a bad magic number",
        mnist_data(lambda b: b"\x01\x02" + b[2:]),
        ["dp", *M],
        "bad magic number",
    ),
    (
        "IDX file with extra bytes",
        mnist_data(lambda b: b + b"\x00"),
        ["dp", *M],
        "longer than its header says",
    ),
    (
        "IDX images of the wrong shape",
        mnist_data(lambda b: encode_idx(np.zeros((10, 28), np.uint8))),
        ["dp", *M],
        "t10k-images",
    ),
    (
        "IDX images and labels of different counts",
        mnist_data(lambda b: encode_idx(np.zeros((9, 28, 28), np.uint8))),
        ["dp", *M],
        "image/label count mismatch",
    ),
    (
        "gzip IDX file that is not gzip",
        mnist_data(lambda b: gzip.compress(b)[:20]),
        ["dp", *M],
        "t10k-images",
    ),
    (
        ".npz that is not a zip file",
        raw_file(b"hello"),
        T,
        "is not an .npz file (not a zip archive",
    ),
    (".npz that is empty (0 bytes)", raw_file(b""), T, "is not a readable .npz file"),
    (
        ".npz holding pickled objects",
        npz(images=np.array([{"a": 1}], dtype=object), labels=np.zeros(1, int)),
        T,
        "pickled objects are refused",
    ),
    (".npz without images/labels", npz(x_train=PIX), T, "needs arrays 'images' and 'labels'"),
    (
        ".npz labels of the wrong shape",
        npz(images=PIX, labels=LAB[:5]),
        T,
        "labels must be (N,) for N=20",
    ),
    (".npz float labels", npz(images=PIX, labels=LAB.astype(float)), T, "labels must be integers"),
    (
        ".npz with NaN pixels",
        npz(images=np.where(PIX > 0.9, np.nan, PIX), labels=LAB),
        T,
        "images must be finite numbers",
    ),
    (
        ".npz with infinite pixels",
        npz(images=np.where(PIX > 0.9, np.inf, PIX), labels=LAB),
        T,
        "images must be finite numbers",
    ),
    (
        ".npz pixels outside [0, 1] for a model",
        npz(images=PIX * 255, labels=LAB),
        TF,
        "pixels must lie in [0, 1]",
    ),
    (
        ".npz images of the wrong shape for the model",
        npz(images=np.random.rand(20, 1, 28, 28), labels=LAB),
        TF,
        "do not fit the model",
    ),
    (
        ".npz images of five axes for --space features",
        npz(images=np.random.rand(20, 1, 1, 8, 8), labels=LAB),
        TF,
        "are not images for --space features",
    ),
    (
        ".npz flat images that are not square for --space features",
        npz(images=np.random.rand(20, 63), labels=LAB),
        TF,
        "are not images for --space features",
    ),
    # checkpoints
    ("checkpoint directory missing", None, [*D, "--checkpoint", "{tmp}/none"], "does not exist"),
    (
        "checkpoint that is a text file",
        raw_file(b"# notes"),
        [*D, "--checkpoint", "{tmp}/v.npz"],
        "is a file, not a defpert checkpoint",
    ),
    (
        "dp --seed above 2^63",
        None,
        [*D, "--seed", str(2**64)],
        "--seed must lie in [0, 2^63)",
    ),
    (
        "train --seed negative",
        None,
        ["train", "--dataset", "digits", "--seed", "-1"],
        "--seed must lie in [0, 2^63)",
    ),
    (
        "checkpoint card whose input_shape is not a shape",
        card_edit(input_shape="abc"),
        [*D, "--checkpoint", "{tmp}/ck"],
        "'input_shape' must be [channels, height, width] of positive integers",
    ),
    (
        "checkpoint card of an absurd shape (terabytes of activations)",
        card_edit(input_shape=[1, 100000, 100000]),
        [*D, "--checkpoint", "{tmp}/ck"],
        "'input_shape' must be [channels, height, width] of positive integers",
    ),
    (
        "checkpoint card whose num_classes is text",
        card_edit(num_classes="ten"),
        [*D, "--checkpoint", "{tmp}/ck"],
        "'num_classes' must be an integer from 2",
    ),
    (
        "tsne on an .npz with no examples",
        npz(images=np.zeros((0, 1, 8, 8), np.float32), labels=np.zeros((0,), np.int64)),
        ["tsne", "--npz", "{tmp}/v.npz"],
        "v holds no examples: nothing to embed",
    ),
    (
        "a misspelt flag",
        None,
        [*D, "--stong-limit", "3"],
        "unrecognized arguments: --stong-limit 3; did you mean --strong-limit? (defpert dp --help",
    ),
    (
        "--out that is a file",
        raw_file(b"# notes"),
        [*D, "--out", "{tmp}/v.npz"],
        "is a file, not a directory: name a directory for the results",
    ),
    (
        "data fetch --data-dir that is a file",
        raw_file(b"# notes"),
        ["data", "fetch", "mnist", "--data-dir", "{tmp}/v.npz"],
        "cannot create directory",
    ),
    (
        "data fetch --from a directory that does not exist",
        None,
        ["data", "fetch", "mnist", "--from", "{tmp}/nonexistent"],
        "--from",
    ),
    (
        "checkpoint directory without model.json",
        raw_file(b""),
        [*D, "--checkpoint", "{tmp}"],
        "not a defpert checkpoint (no model.json)",
    ),
    (
        "checkpoint card of another format",
        card_edit(format="other/1"),
        [*D, "--checkpoint", "{tmp}/ck"],
        "is not a defpert checkpoint card",
    ),
    (
        "checkpoint weights holding NaN",
        nan_weights,
        [*D, "--checkpoint", "{tmp}/ck"],
        "holds NaN or infinite weights",
    ),
    (
        "checkpoint card with std 0",
        card_edit(normalization={"mean": 0.3, "std": 0.0}),
        [*D, "--checkpoint", "{tmp}/ck"],
        "normalization needs a finite mean and a positive finite std",
    ),
    (
        "checkpoint card with an infinite mean",
        card_edit(normalization={"mean": float("inf"), "std": 0.4}),
        [*D, "--checkpoint", "{tmp}/ck"],
        "normalization needs a finite mean and a positive finite std",
    ),
    (
        "checkpoint card naming another architecture",
        card_edit(architecture="lenet"),
        [*D, "--checkpoint", "{tmp}/ck"],
        "does not match architecture 'lenet'",
    ),
    (
        "checkpoint weights that are a pickle (runs a command if unpickled)",
        pickled_checkpoint,
        [*D, "--checkpoint", "{tmp}/ck"],
        "is not a valid safetensors file",
    ),
    (
        "checkpoint for other inputs (digits model, MNIST data)",
        mnist_data(lambda b: b),
        ["dp", *M[:2], "--checkpoint", "{tmp}/ck", "--limit", "5"],
        "made for inputs of shape (1, 8, 8)",
    ),
    (
        "corrupt training state in the run directory",
        corrupt_train_state,
        ["train", "--dataset", "digits", "--epochs", "2", "--out", "{tmp}/o"],
        "is not a readable training state",
    ),
    (
        "output directory where nothing can be created (/proc)",
        None,
        ["train", "--dataset", "digits", "--out", "/proc/defpert-run"],
        "cannot create directory /proc/defpert-run",
    ),
    (
        "reproduce with an unknown model kind",
        None,
        ["reproduce", "--dataset", "digits", "--models", "standard,magic"],
        "unknown model kind 'magic'",
    ),
    (
        "reproduce without the original's defense",
        None,
        ["reproduce", "--dataset", "digits", "--defense", "margin"],
        "--defense must include ce",
    ),
    (
        "run directory of other settings",
        other_run,
        ["train", "--dataset", "digits", "--out", "{tmp}/o"],
        "holds results of other settings",
    ),
    (
        "run directory whose config.json is garbage",
        corrupt_run("{bad"),
        ["train", "--dataset", "digits", "--out", "{tmp}/o"],
        "use --overwrite to replace them",
    ),
    (
        "run directory whose config.json is a list",
        corrupt_run("[]"),
        ["train", "--dataset", "digits", "--out", "{tmp}/o"],
        "holds JSON of another shape",
    ),
    # empty paths: not a silent default
    ("--checkpoint ''", None, [*D, "--checkpoint", ""], "--checkpoint is empty; give a path"),
    ("--out ''", None, [*D, "--out", ""], "--out is empty; give a path"),
    ("train --out ''", None, ["train", "--dataset", "digits", "--out", ""], "--out is empty"),
    ("tsne --run ''", None, ["tsne", "--run", ""], "--run is empty; give a path"),
    # numbers
    ("eps 0", None, [*D, "-e", "0"], "eps must be a positive number"),
    ("eps negative", None, [*D, "-e", "-0.1"], "eps must be a positive number"),
    ("eps NaN", None, [*D, "-e", "nan"], "eps must be a positive number"),
    ("eps infinite", None, [*D, "-p", "l2", "-e", "inf"], "eps must be a positive number"),
    (
        "L-inf eps of an L2 size (2.5)",
        None,
        [*D, "-p", "linf", "-e", "2.5"],
        "did you mean an L2 radius",
    ),
    ("steps 0", None, [*D, "-k", "0"], "steps must be at least 1"),
    ("step size 0", None, [*D, "-a", "0"], "step size must be positive"),
    ("step size negative", None, [*D, "-a", "-0.01"], "step size must be positive"),
    ("steps not a number", None, [*D, "-k", "ten"], "invalid int value: 'ten'"),
    ("--limit 0", None, [*D, "--limit", "0"], "--limit must be at least 1"),
    ("--batch-size 0 (dp)", None, [*D, "--batch-size", "0"], "--batch-size must be at least 1"),
    (
        "--batch-size 0 (train)",
        None,
        ["train", "--dataset", "digits", "--batch-size", "0"],
        "--batch-size must be at least 1",
    ),
    (
        "--strong-limit 0",
        None,
        [*D, "--strong", "--strong-limit", "0"],
        "--strong-limit must be at least 1",
    ),
    (
        "--strong-steps 0",
        None,
        [*D, "--strong", "--strong-steps", "0"],
        "--strong-steps must be at least 1",
    ),
    (
        "--square-queries 0",
        None,
        [*D, "--square-queries", "0"],
        "--square-queries must be at least 1",
    ),
    (
        "--strong with an unknown tier",
        None,
        [*D[:3], "--strong", "huge", "--limit", "20"],
        "unknown strong-attack tier 'huge'; choose one of: quick, standard, plus",
    ),
    (
        "reproduce --strong with an unknown tier",
        None,
        ["reproduce", "--quick", "--dataset", "digits", "--strong", "full", "--out", "{tmp}/r"],
        "unknown strong-attack tier 'full'",
    ),
    (
        "--budget-from with an unknown value",
        None,
        [*D, "--budget-from", "natural"],
        "unknown --budget-from 'natural'; choose one of: defended, original",
    ),
    (
        "--budget-from original with a defense budget above 2 eps",
        None,
        [*D, "--budget-from", "original", "--defense-eps", "0.5"],
        "--budget-from original needs a defense budget of at most 2 eps",
    ),
    (
        "reproduce --budget-from with an unknown value",
        None,
        ["reproduce", "--quick", "--dataset", "digits", "--budget-from", "x", "--out", "{tmp}/r"],
        "unknown --budget-from 'x'",
    ),
    (
        "reproduce --search-precision with an unknown value",
        None,
        [
            "reproduce",
            "--quick",
            "--dataset",
            "digits",
            "--search-precision",
            "fp16",
            "--out",
            "{tmp}/r",
        ],
        "unknown search precision 'fp16'; choose one of",
    ),
    (
        "robustify with no inner restart",
        None,
        [*D, "--defense", "robustify", "--inner-restarts", "0"],
        "--inner-restarts must be at least 1, got 0",
    ),
    (
        "checkpoint of another dataset of the same shape",
        None,
        ["dp", "--checkpoint", "shipped:fashion-mnist-cnn-pgd", "--no-strong", "--limit", "5"],
        "was trained on fashion-mnist, not mnist; pass --dataset fashion-mnist",
    ),
    (
        "robustify with no inner step",
        None,
        [*D, "--defense", "robustify", "--inner-steps", "0"],
        "--inner-steps must be at least 1, got 0",
    ),
    (
        "unknown defense optimizer",
        None,
        [*D, "--defense", "robustify", "--defense-optimizer", "sgd"],
        "unknown optimizer 'sgd'; choose one of: steepest, adam, rmsprop",
    ),
    (
        "unknown shipped checkpoint",
        None,
        [*D, "--checkpoint", "shipped:nope"],
        "no shipped checkpoint 'nope'",
    ),
    (
        "shipped checkpoint whose weights do not match its SHA-256",
        tampered_shipped,
        [*D, "--checkpoint", "shipped:digits-cnn"],
        "shipped checkpoint 'digits-cnn' does not match its recorded SHA-256",
    ),
    (
        "negative TRADES weight",
        None,
        ["train", "--dataset", "digits", "--adversarial", "trades", "--trades-beta", "-1"],
        "--trades-beta must be 0 or more, got -1",
    ),
    (
        "--adaptive-square-queries negative",
        None,
        [*D, "--adaptive-square-queries", "-1"],
        "--adaptive-square-queries must be 0 or more",
    ),
    (
        "--defense-eps 0 (not the attack's eps in disguise)",
        None,
        [*D, "--defense-eps", "0"],
        "--defense-eps must be above 0, got 0",
    ),
    (
        "--defense-steps 0",
        None,
        [*D, "--defense-steps", "0"],
        "--defense-steps must be above 0, got 0",
    ),
    (
        "--defense-step-size 0",
        None,
        [*D, "--defense-step-size", "0"],
        "--defense-step-size must be above 0, got 0",
    ),
    (
        "preempt with no defender's budget",
        None,
        ["train", "--dataset", "digits", "--adversarial", "preempt", "--defense-eps", "0"],
        "--defense-eps must be above 0",
    ),
    (
        "--adaptive-limit negative",
        None,
        [*D, "--adaptive-limit", "-1"],
        "--adaptive-limit must be 0 or more",
    ),
    (
        "--epochs 0",
        None,
        ["train", "--dataset", "digits", "--epochs", "0"],
        "--epochs must be at least 1",
    ),
    ("--lr 0", None, ["train", "--dataset", "digits", "--lr", "0"], "--lr must be positive"),
    (
        "unknown adversarial training",
        None,
        ["train", "--dataset", "digits", "--adversarial", "magic"],
        "unknown adversarial training 'magic'",
    ),
    (
        "reproduce --adv-epochs 0",
        None,
        ["reproduce", "--dataset", "digits", "--adv-epochs", "0"],
        "--adv-epochs must be at least 1",
    ),
    (
        "reproduce --limit 0",
        None,
        ["reproduce", "--dataset", "digits", "--limit", "0"],
        "--limit must be at least 1",
    ),
    (
        "reproduce --strong-limit 0",
        None,
        ["reproduce", "--dataset", "digits", "--strong-limit", "0"],
        "--strong-limit must be at least 1",
    ),
    (
        "reproduce --adaptive-limit 0",
        None,
        ["reproduce", "--dataset", "digits", "--adaptive-limit", "0"],
        "--adaptive-limit must be at least 1",
    ),
    (
        "unknown learning-rate schedule",
        None,
        ["train", "--dataset", "digits", "--lr-schedule", "step"],
        "unknown --lr-schedule 'step'",
    ),
    (
        "negative radius warm-up",
        None,
        ["train", "--dataset", "digits", "--adversarial", "pgd", "--adv-warmup", "-1"],
        "--adv-warmup must be 0 or more epochs",
    ),
    (
        "adversarial training radius 0",
        None,
        ["train", "--dataset", "digits", "--adversarial", "pgd", "--adv-eps", "0"],
        "eps must be a positive number",
    ),
    (
        "--per-class 0",
        npz(images=PIX, labels=LAB),
        [*T[:3], "--per-class", "0"],
        "--per-class must be at least 1",
    ),
    (
        "sweep radii that are not numbers",
        None,
        ["sweep", "--dataset", "digits", "--eps", "0.1,big"],
        "--eps must be comma-separated numbers",
    ),
    # names
    ("unknown dataset", None, ["train", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (
        "dataset name that is a path",
        None,
        ["train", "--dataset", "../../x"],
        "unknown dataset '../../x'",
    ),
    (
        "unknown model",
        None,
        ["train", "--dataset", "digits", "--model", "resnet"],
        "unknown model 'resnet'",
    ),
    ("unknown norm", None, [*D, "-p", "l3"], "unknown norm 'l3'"),
    ("unknown defense", None, [*D, "--defense", "magic"], "unknown defense 'magic'"),
    ("unknown split", None, [*D, "--split", "../x"], "unknown split '../x'"),
    ("unknown precision", None, [*D, "--precision", "fp8"], "unknown precision 'fp8'"),
    ("unknown device", None, [*D, "--device", "tpu"], "unknown device 'tpu'"),
    (
        "CUDA asked for on a machine without one",
        None,
        [*D, "--device", "cuda"],
        "no CUDA GPU is available",
    ),
    (
        "tsne on a directory without saved versions",
        None,
        ["tsne", "--run", "{tmp}", "--versions", "x"],
        "holds no saved versions",
    ),
    (
        "tsne on a dp run stopped before it saved the attacked data",
        stopped_dp_run,
        ["tsne", "--run", "{tmp}/r"],
        "has no 'adversarial' version yet",
    ),
    ("unknown command", None, ["nonsense"], "invalid choice: 'nonsense'"),
    (
        "--lend-from a directory that is no run",
        digits_checkpoint,
        [
            "dp",
            "--dataset",
            "digits",
            "--checkpoint",
            "ck",
            "--lend-from",
            ".",
            "--no-strong",
            "--limit",
            "10",
        ],  # fmt: skip
        "not a defpert dp run directory",
    ),
]


def run_case(tmp: Path, setup, argv: list[str]) -> tuple[int, str]:
    if setup is not None:
        setup(tmp)
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    if argv[0] in ("dp", "train", "sweep") and "--out" not in argv:
        argv += ["--out", str(tmp / "out")]
    err = io.StringIO()
    real, sys.stderr = sys.stderr, err
    try:
        code = main(argv)
    finally:
        sys.stderr = real
    return code, err.getvalue()


@pytest.mark.parametrize(("what", "setup", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, monkeypatch, what, setup, argv, message):
    from defpert.models import shipped

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", shipped.SHIPPED_DIR)  # restored after
    code, err = run_case(tmp_path, setup, argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert not (tmp_path / "pwned").exists()  # nothing from a file was executed
    doc = DOC.read_text()
    assert f"| {what} |" in doc, (
        f"docs/errors.md lacks {what!r}: run python tests/test_bad_input.py"
    )


LIBRARY_CASES = [
    ("NaN pixels", lambda x, y: (x.masked_fill(x > 0.9, float("nan")), y), "NaN or infinite"),
    ("pixels in [0, 255]", lambda x, y: (x * 255, y), "pixels must lie in [0, 1]"),
    (
        "images without a channel axis",
        lambda x, y: (x[:, 0], y),
        "images must be a float tensor (N, C, H, W)",
    ),
    ("labels outside the classes", lambda x, y: (x, y + 10), "labels must lie in [0, 9]"),
    ("labels of another length", lambda x, y: (x, y[:3]), "labels must be integers of shape (20,)"),
    ("images of another size", lambda x, y: (torch.rand(20, 1, 28, 28), y), "do not fit the model"),
]


@pytest.mark.parametrize(
    ("what", "spoil", "message"), LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES]
)
def test_bad_input_to_library_calls(what, spoil, message):
    from defpert.attacks import pgd
    from defpert.core.threat import LinfBall

    model = build_model("cnn", (1, 8, 8), 10).eval()
    x, y = spoil(torch.from_numpy(PIX), torch.from_numpy(LAB))
    with pytest.raises(DefpertError, match=None) as info:
        pgd(model, x, y, threat=LinfBall(0.1), steps=2, step_size=0.05)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert f"| `pgd(...)`: {what} |" in DOC.read_text()


def write_doc() -> None:
    """Run every case and write docs/errors.md from what the user actually sees."""
    import os
    import tempfile

    rows = []
    from defpert.models import shipped

    real_shipped = shipped.SHIPPED_DIR
    for what, setup, argv, _ in CASES:
        shipped.SHIPPED_DIR = real_shipped
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                code, err = run_case(Path(tmp), setup, argv)
            finally:
                os.chdir(cwd)
        shown = " ".join(a if "{tmp}" not in a else a.replace("{tmp}", "DIR") for a in argv)
        line = err.strip().replace(os.path.realpath(tmp), "DIR").replace(tmp, "DIR")
        line = line.replace(tempfile.gettempdir(), "/tmp").replace("|", "\\|")
        rows.append(f"| {what} | `defpert {shown}` | {code} | {line} |")
    for what, spoil, _ in LIBRARY_CASES:
        from defpert.attacks import pgd
        from defpert.core.threat import LinfBall

        x, y = spoil(torch.from_numpy(PIX), torch.from_numpy(LAB))
        try:
            pgd(
                build_model("cnn", (1, 8, 8), 10).eval(),
                x,
                y,
                threat=LinfBall(0.1),
                steps=2,
                step_size=0.05,
            )
            said = "(accepted)"
        except DefpertError as exc:
            said = f"DefpertError: {exc}".replace("|", "\\|")
        rows.append(f"| `pgd(...)`: {what} | library call | exception | {said} |")
    text = (
        "# Bad input and what the user sees\n\n"
        "Every row was run by `python tests/test_bad_input.py`, which wrote this file; the\n"
        "test suite runs each case again and checks the exit status, that the message is one\n"
        "line without a traceback, and that nothing in a file was executed. Paths under a\n"
        "temporary directory are shown as DIR or /tmp.\n\n"
        f"{len(CASES)} command-line cases, {len(LIBRARY_CASES)} library cases.\n\n"
        "| bad input | command | exit | what the user sees (stderr) |\n|---|---|---|---|\n"
        + "\n".join(rows) + "\n"
    )  # fmt: skip
    old = DOC.read_text() if DOC.exists() else ""
    if "<!-- faults:begin -->" in old:  # tests/test_faults.py's section, kept as it wrote it
        text += "\n" + old[old.index("<!-- faults:begin -->") :]
    DOC.write_text(text)
    print(f"wrote {DOC} ({len(rows)} rows)")


if __name__ == "__main__":
    write_doc()
