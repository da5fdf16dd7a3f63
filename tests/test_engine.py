"""The projected-gradient engine, the PGD attack and the defensive perturbations."""

import copy

import pytest
import torch
import torch.nn.functional as F

from defpert.attacks import StrongConfig, pgd, strong_attack
from defpert.core.engine import Schedule, perturb
from defpert.core.evaluate import accuracy, correct
from defpert.core.objectives import cross_entropy, hedge, margin
from defpert.core.threat import L2Ball, LinfBall
from defpert.defenses.methods import DefendedModel, Defense, defend
from defpert.defenses.registry import DEFENSES

THREATS = [LinfBall(0.15), L2Ball(1.0)]


@pytest.fixture(scope="module")
def xy(digits_test):
    return digits_test.images[:120], digits_test.labels[:120]


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
@pytest.mark.parametrize("ascend", [True, False])
def test_perturbation_stays_in_ball_and_box(digits_model, xy, threat, ascend):
    x, y = xy
    schedule = Schedule(15, threat.eps / 5, ascend=ascend, random_start=True)
    out = perturb(
        digits_model,
        x,
        y,
        threat=threat,
        objective=cross_entropy,
        schedule=schedule,
        generator=torch.Generator().manual_seed(0),
    )
    assert (threat.size(out - x) <= threat.eps + 1e-6).all()
    assert out.min() >= 0 and out.max() <= 1


def test_tiny_eps_changes_nothing_measurable(digits_model, xy):
    x, y = xy
    out = pgd(digits_model, x, y, threat=LinfBall(1e-7), steps=10, step_size=1e-7)
    assert (out - x).abs().max() <= 1e-6  # eps plus float32 rounding of x + delta
    assert torch.equal(correct(digits_model, out, y), correct(digits_model, x, y))


def test_fixed_seed_repeats_exactly(digits_model, xy):
    x, y = xy
    runs = [
        pgd(
            digits_model,
            x,
            y,
            threat=L2Ball(1.0),
            steps=10,
            step_size=0.2,
            random_start=True,
            generator=torch.Generator().manual_seed(3),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_attack_lowers_accuracy(digits_model, xy, threat):
    x, y = xy
    clean = accuracy(digits_model, x, y)
    attacked = accuracy(
        digits_model, pgd(digits_model, x, y, threat=threat, steps=20, step_size=threat.eps / 8), y
    )
    assert clean > 0.9
    assert attacked < clean - 0.3


@pytest.mark.parametrize("method", ["ce", "margin", "robustify"])
def test_proactive_defense_raises_true_class_margin(digits_model, xy, method):
    x, y = xy
    d = Defense(method, LinfBall(0.1), steps=10, step_size=0.02)
    x_def = defend(digits_model, x, y, d)
    with torch.no_grad():
        before = -margin(digits_model(x), y)
        after = -margin(digits_model(x_def), y)
    assert (after >= before - 1e-4).float().mean() > 0.95
    assert after.mean() > before.mean() + 1.0
    # and it makes the weak attack less successful
    threat = LinfBall(0.15)
    attacked = accuracy(
        digits_model, pgd(digits_model, x, y, threat=threat, steps=10, step_size=0.03), y
    )
    attacked_def = accuracy(
        digits_model, pgd(digits_model, x_def, y, threat=threat, steps=10, step_size=0.03), y
    )
    assert attacked_def > attacked


@pytest.mark.parametrize("method", ["anti-adversary", "hedge"])
def test_reactive_defense_needs_no_label_and_keeps_clean_accuracy(digits_model, xy, method):
    x, y = xy
    d = Defense(method, LinfBall(0.1), steps=5, step_size=0.02)
    x_def = defend(digits_model, x, None, d)
    assert (d.threat.size(x_def - x) <= 0.1 + 1e-6).all()
    assert accuracy(digits_model, x_def, y) >= accuracy(digits_model, x, y) - 0.02


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
@pytest.mark.parametrize("method", DEFENSES)
def test_results_do_not_depend_on_batch_size(digits_model, xy, threat, method):
    x, y = xy[0][:64], xy[1][:64]
    d = Defense(method, threat, steps=5, step_size=threat.eps / 4)
    outs = [defend(digits_model, x, y, d, batch_size=b) for b in (1, 7, 64)]
    preds = [digits_model(o).argmax(1) for o in outs]
    # Same predictions; same pixels up to float32 summation order (gemv vs gemm kernels).
    for o, p in zip(outs[1:], preds[1:], strict=True):
        assert torch.allclose(o, outs[0], atol=1e-4)
        assert torch.equal(p, preds[0])


def test_two_step_inner_attack_does_not_depend_on_batch_size(digits_model, xy):
    # Steps of 1.25 eps carry a pixel across the ball on the sign of its gradient; where
    # that component is float rounding, its sign changed with the chunk size (small chunks
    # take other matrix kernels), and one example in 64 came out 10 pixels different.
    x, y = xy[0][:64], xy[1][:64]
    d = Defense("robustify", LinfBall(0.15), steps=5, step_size=0.15 / 4, inner_steps=2)
    outs = [defend(digits_model, x, y, d, batch_size=b) for b in (1, 2, 3, 7, 64)]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-4)


def test_summed_loss_still_moves_confident_inputs():
    # Logit gaps near 100 make each example's cross-entropy gradient ~1e-43: divided by the
    # batch size (a mean loss) it underflows to exactly zero in float32, summed it does not.
    torch.manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(512, 1, 4, 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[0] = 100 / 8
        model[1].weight[1] = torch.linspace(-1, 1, 16)
    y = model(x).argmax(1)

    def gradient_moves(reduction: str) -> torch.Tensor:
        d = torch.zeros_like(x, requires_grad=True)
        loss = F.cross_entropy(model(x + d), y, reduction=reduction)
        return torch.autograd.grad(loss, d)[0].flatten(1).abs().amax(1) > 0

    only_summed = gradient_moves("sum") & ~gradient_moves("mean")
    assert only_summed.sum() >= 100  # the setting really separates a sum from a mean
    d = Defense("ce", LinfBall(0.05), steps=1, step_size=0.05)
    moved = (defend(model, x, y, d, batch_size=512) - x).abs().flatten(1).amax(1) > 0
    assert moved[only_summed].all()


def test_model_parameters_and_mode_untouched(digits_model, xy):
    x, y = xy
    model = copy.deepcopy(digits_model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x, y, threat=LinfBall(0.1), steps=3, step_size=0.03)
    defend(model, x, y, Defense("robustify", LinfBall(0.1), steps=2, step_size=0.05))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    strong_attack(
        model,
        x[:20],
        y[:20],
        threat=LinfBall(0.1),
        config=StrongConfig(tier="quick", steps=5, restarts=1, square_queries=20),
    )
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_agrees_with_art_pgd(digits_model, xy, threat):
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescent

    from defpert.testing import art_classifier

    x, y = xy
    step = threat.eps / 8
    ours = accuracy(
        digits_model, pgd(digits_model, x, y, threat=threat, steps=20, step_size=step), y
    )
    art_pgd = ProjectedGradientDescent(
        art_classifier(digits_model, x, 10),
        norm=np.inf if threat.norm == "linf" else 2,
        eps=threat.eps,
        eps_step=step,
        max_iter=20,
        num_random_init=0,
        batch_size=128,
        verbose=False,
    )
    theirs = accuracy(digits_model, torch.from_numpy(art_pgd.generate(x.numpy(), y.numpy())), y)
    assert abs(ours - theirs) <= 0.01 + 1e-9


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_strong_attack_never_above_weak(digits_model, xy, threat):
    x, y = xy[0][:60], xy[1][:60]
    weak = pgd(digits_model, x, y, threat=threat, steps=5, step_size=threat.eps / 4)
    res = strong_attack(
        digits_model,
        x,
        y,
        threat=threat,
        known_adversarial=[weak],
        config=StrongConfig(tier="quick", steps=20, restarts=1, square_queries=50),
    )
    assert res.accuracy <= accuracy(digits_model, weak, y)
    assert res.max_perturbation <= threat.eps + 1e-5
    assert torch.equal(res.robust, correct(digits_model, res.adversarial, y))


def test_adaptive_attack_through_reactive_defense(digits_model, xy):
    x, y = xy[0][:40], xy[1][:40]
    d = Defense("hedge", LinfBall(0.1), steps=3, step_size=0.03)
    defended = DefendedModel(digits_model, d, mode="bpda")
    threat = LinfBall(0.15)
    clean = accuracy(defended, x, y)
    for mode in ("bpda", "unrolled"):
        adv = pgd(
            DefendedModel(digits_model, d, mode=mode),
            x,
            y,
            threat=threat,
            steps=10,
            step_size=0.03,
            batch_size=16,
        )
        assert (threat.size(adv - x) <= 0.15 + 1e-6).all()
        assert accuracy(defended, adv, y) < clean - 0.2


def test_hedge_objective_ignores_labels():
    logits = torch.randn(5, 10)
    assert torch.equal(
        hedge(logits, torch.zeros(5, dtype=torch.long)), hedge(logits, torch.arange(5))
    )


def test_the_fused_cross_entropy_sum_gives_each_example_the_same_gradient():
    from defpert.core.objectives import cross_entropy, margin, summed

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 10, generator=g) * 30).requires_grad_(True)
    labels = torch.randint(0, 10, (64,), generator=g)
    for objective in (cross_entropy, margin):
        (fused,) = torch.autograd.grad(summed(objective)(logits, labels), logits)
        (plain,) = torch.autograd.grad(objective(logits, labels).sum(), logits)
        assert torch.equal(fused, plain)
