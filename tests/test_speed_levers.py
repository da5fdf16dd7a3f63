"""Speed never changes a number: the levers give what the plain implementation gives.

The levers: max-pooling before the ReLU in the zoo's CNNs, channels-last convolution
weights, frozen parameters during attacks, cache-sized chunks. Each is compared here
with the textbook version (channels-first, ReLU then pool, whole batch, trainable
parameters) on the same weights.
"""

import pytest
import torch
from torch import nn

from defpert.attacks import pgd
from defpert.core.engine import frozen_parameters
from defpert.core.threat import L2Ball, LinfBall
from defpert.defenses.methods import Defense, defend
from defpert.models import build_model
from defpert.testing import textbook_model, textbook_pgd


@pytest.fixture(scope="module")
def cnn_and_data():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("cnn", (1, 28, 28), 10, mean=0.13, std=0.31).eval()
        x = torch.rand(150, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("name", ["cnn", "lenet"])
def test_pool_before_relu_is_the_same_function_and_gradient(name):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(name, (1, 28, 28), 10).eval()
        x = torch.rand(16, 1, 28, 28, requires_grad=True)
    plain = textbook_model(model)
    (g_fast,) = torch.autograd.grad(model(x).square().sum(), x)
    (g_plain,) = torch.autograd.grad(plain(x).square().sum(), x)
    assert torch.allclose(model(x), plain(x), atol=1e-5)
    assert torch.allclose(g_fast, g_plain, atol=1e-5)
    assert [type(m) for m in model].index(nn.MaxPool2d) < [type(m) for m in model].index(nn.ReLU, 3)


def test_zoo_convolutions_are_channels_last():
    conv = build_model("cnn")[3]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()


@pytest.mark.parametrize("threat", [LinfBall(0.2), L2Ball(2.0)], ids=["linf", "l2"])
def test_engine_is_the_textbook_loop_bit_for_bit(cnn_and_data, threat):
    model, x, y = cnn_and_data
    step = threat.eps / 10
    fast = pgd(model, x, y, threat=threat, steps=10, step_size=step)  # chunks, frozen
    plain = textbook_pgd(model, x, y, threat, 10, step)  # whole batch, trainable
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("threat", [LinfBall(0.2), L2Ball(2.0)], ids=["linf", "l2"])
def test_zoo_layout_gives_the_textbook_layouts_predictions(cnn_and_data, threat):
    model, x, y = cnn_and_data
    step = threat.eps / 10
    fast = pgd(model, x, y, threat=threat, steps=10, step_size=step)
    plain = textbook_pgd(textbook_model(model), x, y, threat, 10, step)
    with torch.no_grad():
        assert torch.equal(model(fast).argmax(1), model(plain).argmax(1))
    # One step agrees to float32 rounding; over ten steps such differences can move a
    # ReLU of this untrained model across zero, so later pixels may differ more.
    one_fast = pgd(model, x, y, threat=threat, steps=1, step_size=step)
    one_plain = textbook_pgd(textbook_model(model), x, y, threat, 1, step)
    assert torch.allclose(one_fast, one_plain, atol=1e-5)


def test_defense_in_chunks_is_the_whole_batch_bit_for_bit(cnn_and_data):
    model, x, y = cnn_and_data
    d = Defense("ce", LinfBall(0.2), steps=5, step_size=0.02)
    assert torch.equal(defend(model, x, y, d), defend(model, x, y, d, batch_size=len(x)))


def test_frozen_parameters_restores_flags():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[1].weight.requires_grad_(False)
    with frozen_parameters(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]


def test_bf16_mode_stays_in_the_ball_and_agrees_with_fp32(digits_model, digits_test):
    x, y = digits_test.images[:200], digits_test.labels[:200]
    threat = LinfBall(0.1)
    runs = {
        p: pgd(digits_model, x, y, threat=threat, steps=10, step_size=0.02, precision=p)
        for p in ("fp32", "bf16")
    }
    assert (threat.size(runs["bf16"] - x) <= 0.1 + 1e-6).all()
    assert not torch.equal(runs["bf16"], runs["fp32"])  # it really ran in another precision
    accs = {p: float((digits_model(a).argmax(1) == y).float().mean()) for p, a in runs.items()}
    assert accs["fp32"] < 0.8  # the attack works
    assert abs(accs["bf16"] - accs["fp32"]) <= 0.03


def test_dp_in_bf16_reports_its_check_against_fp32(digits_model, digits_test):
    from defpert.study.dp import DPConfig, run_dp

    cfg = DPConfig(eps=0.1, step_size=0.02, steps=5, strong=False, precision="bf16")
    result = run_dp(digits_model, digits_test.head(100), cfg)[0]
    check = result["precision"]
    assert check["name"] == "bf16" and check["check_n"] == 100
    numbers = check["numbers"]  # every number the weak attack and the defense produce
    assert set(numbers) == {"original_attacked", "ce/defensive", "ce/defensive_attacked"}
    gaps = [abs(v["fp32"] - v["bf16"]) for v in numbers.values()]
    assert check["agrees_within_0.5pct"] == (max(gaps) <= 0.005)
    assert numbers["original_attacked"]["bf16"] == result["accuracy"]["original_attacked"]
    assert numbers["ce/defensive_attacked"]["bf16"] == result["accuracy"]["defensive_attacked"]
