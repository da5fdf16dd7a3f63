"""Adversarial training (PGD, FGSM with random start) makes the model more robust to PGD."""

import json

import pytest

from defpert.attacks import pgd
from defpert.errors import DefpertError
from defpert.evaluate import accuracy
from defpert.models import load_checkpoint
from defpert.threat import LinfBall
from defpert.train import TrainConfig, train


def robust_accuracy(model, test):
    x_adv = pgd(model, test.images, test.labels, threat=LinfBall(0.15), steps=20, step_size=0.02)
    return accuracy(model, x_adv, test.labels)


@pytest.fixture(scope="module")
def standard(digits_test):
    model = train(TrainConfig(dataset="digits", epochs=10), progress=False).model
    return robust_accuracy(model, digits_test)


@pytest.mark.parametrize(
    "adversarial", [{"adversarial": "fgsm-rs"}, {"adversarial": "pgd", "adv_steps": 7, "adv_step_size": 0.05}],
    ids=["fgsm-rs", "pgd"],
)  # fmt: skip
def test_adversarial_training_raises_accuracy_under_pgd(
    digits_test, standard, tmp_path, adversarial
):
    cfg = TrainConfig(dataset="digits", epochs=10, adv_eps=0.15, **adversarial)
    result = train(cfg, out=tmp_path / "ck", progress=False)
    assert accuracy(result.model, digits_test.images, digits_test.labels) > 0.95
    assert robust_accuracy(result.model, digits_test) > standard + 0.15  # measured: 0.36 -> 0.64
    # the card says what the model was trained against, and round-trips
    model, card = load_checkpoint(tmp_path / "ck")
    assert card["training"]["kind"] == f"adversarial-{adversarial['adversarial']}"
    threat = card["threat_trained_against"]
    assert threat["norm"] == "linf" and threat["eps"] == 0.15 and threat["random_start"]
    assert threat["steps"] == (1 if adversarial["adversarial"] == "fgsm-rs" else 7)
    assert json.loads((tmp_path / "ck" / "model.json").read_text())["training"] == card["training"]
    assert robust_accuracy(model, digits_test) == robust_accuracy(result.model, digits_test)


def test_unknown_adversarial_training():
    with pytest.raises(DefpertError, match="unknown adversarial training 'trades'"):
        TrainConfig(dataset="digits", adversarial="trades").validate()
