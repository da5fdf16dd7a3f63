"""Adversarial training (PGD, FGSM with random start) makes the model more robust to PGD."""

import json

import pytest

from defpert.attacks import pgd
from defpert.core.evaluate import accuracy
from defpert.core.threat import LinfBall
from defpert.errors import DefpertError
from defpert.models import load_checkpoint
from defpert.train import TrainConfig, _lr_schedule, _warmed_up, train


def robust_accuracy(model, test):
    x_adv = pgd(model, test.images, test.labels, threat=LinfBall(0.15), steps=20, step_size=0.02)
    return accuracy(model, x_adv, test.labels)


@pytest.fixture(scope="module")
def standard(digits_test):
    model = train(TrainConfig(dataset="digits", epochs=10), progress=False).model
    return robust_accuracy(model, digits_test)


@pytest.mark.parametrize(
    "adversarial", [{"adversarial": "fgsm-rs"}, {"adversarial": "pgd", "adv_steps": 7, "adv_step_size": 0.05},
                    {"adversarial": "trades", "adv_steps": 7, "adv_step_size": 0.05}],
    ids=["fgsm-rs", "pgd", "trades"],
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
    assert threat["norm"] == "linf" and threat["eps"] == 0.15
    assert threat["random_start"] == (adversarial["adversarial"] != "trades")  # trades: near x
    assert ("trades_beta" in card["training"]) == (adversarial["adversarial"] == "trades")
    assert threat["steps"] == (1 if adversarial["adversarial"] == "fgsm-rs" else 7)
    assert json.loads((tmp_path / "ck" / "model.json").read_text())["training"] == card["training"]
    assert robust_accuracy(model, digits_test) == robust_accuracy(result.model, digits_test)


def test_unknown_adversarial_training():
    with pytest.raises(DefpertError, match="unknown adversarial training 'magic'"):
        TrainConfig(dataset="digits", adversarial="magic").validate()
    with pytest.raises(DefpertError, match="--trades-beta must be 0 or more"):
        TrainConfig(dataset="digits", adversarial="trades", trades_beta=-1).validate()


def test_trades_kl_is_zero_at_the_clean_output_and_positive_elsewhere():
    import torch

    from defpert.train import trades_kl

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert trades_kl(logits, logits).abs().max() < 1e-6
    other = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    p, q = logits.softmax(1), other.softmax(1)
    assert torch.allclose(trades_kl(logits, other), (p * (p / q).log()).sum(1), atol=1e-6)


def test_radius_warm_up_grows_linearly_to_the_training_radius():
    adversary = TrainConfig(dataset="digits", adversarial="pgd", adv_eps=0.3,
                            adv_steps=10, adv_step_size=0.03).adversary()  # fmt: skip
    assert adversary is not None
    radii = [_warmed_up(adversary, done, warmup=4)[0].eps for done in range(6)]
    assert radii == pytest.approx([0.075, 0.15, 0.225, 0.3, 0.3, 0.3])
    threat, schedule = _warmed_up(adversary, 0, warmup=4)
    assert schedule.step_size == pytest.approx(0.0075) and schedule.steps == 10
    assert _warmed_up(adversary, 0, warmup=0) is adversary  # no warm-up: the full radius


def test_cyclic_learning_rate_rises_to_lr_at_half_way_then_falls_to_zero():
    import torch

    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=5e-3)
    schedule = _lr_schedule(optimizer, "cyclic", total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-3) and max(rates) == pytest.approx(5e-3)
    assert rates.index(max(rates)) == 4 and rates[-1] == 0  # as Wong et al.: t = (step + 1) / n
    assert rates[:5] == sorted(rates[:5]) and rates[4:] == sorted(rates[4:], reverse=True)


def test_adversarial_training_defaults_to_the_recipe_that_trains_on_mnist():
    from defpert.train import recipe

    assert recipe("none") == {"epochs": 3, "batch_size": 64, "lr": 2e-3,
                              "lr_schedule": "cosine", "adv_warmup": 0.0}  # fmt: skip
    assert recipe("fgsm-rs") == {"epochs": 10, "batch_size": 100, "lr": 5e-3,
                                 "lr_schedule": "cyclic", "adv_warmup": 2.0}  # fmt: skip
    chosen = recipe("pgd", epochs=5, lr=1e-3, lr_schedule=None, adv_warmup=None)
    assert chosen["epochs"] == 5 and chosen["lr"] == 1e-3 and chosen["adv_warmup"] == 1.0
    assert chosen["lr_schedule"] == "cyclic"  # None: not given
    assert recipe("pgd", adv_warmup=0.0)["adv_warmup"] == 0.0  # 0 is a choice, not "not given"


def test_preempt_point_stays_within_both_budgets_and_the_box(digits_test):
    import torch

    from defpert.core.threat import L2Ball
    from defpert.models import build_model
    from defpert.train import preempt_point

    model = build_model("cnn", (1, 8, 8), 10).eval()
    x, y = digits_test.images[:64], digits_test.labels[:64]
    defender, threat = LinfBall(0.1), LinfBall(0.15)
    from defpert.core.engine import Schedule

    with torch.random.fork_rng():
        torch.manual_seed(0)
        point = preempt_point(model, x, y, defender, threat, Schedule(5, 0.04, random_start=True))
    assert point.shape == x.shape and float(point.min()) >= 0 and float(point.max()) <= 1
    assert float((point - x).abs().amax()) <= 0.25 + 1e-6
    assert float((point - x).abs().amax()) > 0.15  # it does use the defender's budget too
    with torch.random.fork_rng():
        torch.manual_seed(0)
        l2 = preempt_point(
            model, x, y, L2Ball(0.5), L2Ball(1.0), Schedule(5, 0.3, random_start=True)
        )
    assert float((l2 - x).flatten(1).norm(dim=1).max()) <= 1.5 + 1e-5


def test_preempt_training_raises_robustified_accuracy_above_pgd_training(digits_test, tmp_path):
    """Robust-to-robustification training (Moon et al.): after ``robustify`` within
    eps_def, PGD within eps of the defended point leaves more digits right on a model
    trained with ``preempt`` than on one trained with PGD at eps, on the same examples."""
    from defpert.defenses.methods import Defense, defend

    eps = eps_def = 0.3  # at 0.15 + 0.15 both kept 94 % of the digits
    common = {"dataset": "digits", "epochs": 10, "adv_eps": eps, "adv_steps": 7,
              "adv_step_size": 2.5 * eps / 7}  # fmt: skip
    models = {
        kind: train(TrainConfig(adversarial=kind, **common), out=tmp_path / kind,
                    progress=False).model
        for kind in ("pgd", "preempt")
    }  # fmt: skip
    x, y = digits_test.images, digits_test.labels
    scores = {}
    for kind, model in models.items():
        defense = Defense("robustify", LinfBall(eps_def), steps=10, step_size=2.5 * eps_def / 10,
                          inner_steps=5)  # fmt: skip
        x_def = defend(model, x, y, defense)
        x_adv = pgd(model, x_def, y, threat=LinfBall(eps), steps=20, step_size=2.5 * eps / 20)
        scores[kind] = accuracy(model, x_adv, y)
    assert scores["preempt"] > scores["pgd"] + 0.03, scores  # measured: 52.8 % -> 60.0 %
    _, card = load_checkpoint(tmp_path / "preempt")
    assert card["training"]["kind"] == "adversarial-preempt"
    assert card["threat_trained_against"]["defense_eps"] == eps_def


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5])
def test_preempt_refuses_a_defender_budget_outside_the_ball(eps):
    with pytest.raises(DefpertError, match="--defense-eps must be above 0"):
        TrainConfig(dataset="digits", adversarial="preempt", defense_eps=eps).validate()
