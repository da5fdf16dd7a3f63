"""The strong suite searching in bfloat16: verdicts in float32 only, the float32 cascade on
what bfloat16 claimed but did not break, the same result for the same seed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_strong import _Interrupted, _MemoryJournal
from torch import nn

from defpert.attacks import StrongConfig, strong_attack
from defpert.attacks import search as search_module
from defpert.attacks.search import FALLBACK, Bf16Search, check_search, resolve_search
from defpert.core.evaluate import correct
from defpert.core.threat import LinfBall
from defpert.errors import DefpertError

THREAT = LinfBall(0.15)
QUICK = StrongConfig("quick", steps=10, square_queries=50)
QUICK_BF16 = StrongConfig("quick", steps=10, square_queries=50, search="bf16")


class WrongInBf16(nn.Module):
    """A model whose bfloat16 predictions differ from its float32 ones on purpose: under
    autocast it negates its logits, so every input looks misclassified to a bf16 search."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return -logits if torch.is_autocast_enabled("cpu") else logits


class BlindInBf16(nn.Module):
    """A model that a bfloat16 search cannot see into: under autocast it answers every input
    as it answers a blank image (one class everywhere, no gradient), so a bf16 search claims
    nothing on that class's examples and nothing there is contested."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):
            return self.model(torch.zeros_like(x)) + 0 * x.sum()
        return self.model(x)


@pytest.fixture
def xy(digits_test):
    return digits_test.images[:40], digits_test.labels[:40]


def test_a_bf16_claim_the_fp32_model_refuses_is_never_a_break(digits_model, xy):
    x, y = xy
    fooled = WrongInBf16(digits_model).eval()
    assert not correct(Bf16Search(fooled), x, y).any()  # bf16 believes every input broken
    fp32 = strong_attack(fooled, x, y, threat=THREAT, config=QUICK, seed=3)
    bf16 = strong_attack(fooled, x, y, threat=THREAT, config=QUICK_BF16, seed=3)
    assert bf16.search == "bf16" and fp32.search == "fp32"
    # every reported break is the fp32 model's verdict
    broken = ~bf16.robust
    assert not correct(fooled, bf16.adversarial[broken], y[broken]).any()
    assert correct(fooled, bf16.adversarial[bf16.robust], y[bf16.robust]).all()
    # the bf16 attacks broke nothing real; every example was contested and got the fp32
    # cascade from the suite's seed, which is then the fp32 suite itself
    assert all(
        v == 0 for k, v in bf16.broken_by.items() if not k.startswith(FALLBACK) and k != "clean"
    )
    assert bf16.contested == int(correct(fooled, x, y).sum())
    assert torch.equal(bf16.robust, fp32.robust)
    assert torch.equal(bf16.adversarial, fp32.adversarial)


def test_a_weaker_bf16_search_that_claims_nothing_still_gets_the_fp32_apgd_ce(digits_model,
                                                                             digits_test):  # fmt: skip
    """Without the float32 APGD-CE on every survivor, the examples of the class the blind
    search sees everywhere are never attacked in float32 and all count as robust."""
    x, y = digits_test.images[:200], digits_test.labels[:200]
    blind = BlindInBf16(digits_model).eval()
    seen = int(Bf16Search(blind)(x[:1]).argmax())
    mine = (y == seen) & correct(blind, x, y)  # claimed by nothing, contested never
    assert mine.sum() >= 5
    fp32 = strong_attack(blind, x, y, threat=THREAT, config=QUICK, seed=4)
    bf16 = strong_attack(blind, x, y, threat=THREAT, config=QUICK_BF16, seed=4)
    assert (~fp32.robust[mine]).sum() >= 3  # breakable in float32
    assert (~bf16.robust[mine]).sum() >= (~fp32.robust[mine]).sum() - 1
    assert bf16.broken_by.get(FALLBACK + "apgd-ce", 0) > 0
    assert not correct(blind, bf16.adversarial[~bf16.robust], y[~bf16.robust]).any()


def test_a_bf16_search_repeats_for_a_seed_and_leaves_the_model_as_it_was(digits_model, xy):
    x, y = xy
    digits_model.eval()
    runs = [strong_attack(digits_model, x, y, threat=THREAT, config=QUICK_BF16, seed=1)
            for _ in range(2)]  # fmt: skip
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert runs[0].broken_by == runs[1].broken_by
    assert not digits_model.training  # the wrapper took the model's mode, not its own
    assert not correct(digits_model, runs[0].adversarial[~runs[0].robust], y[~runs[0].robust]).any()


def test_an_interrupted_bf16_search_continues_inside_the_fp32_cascade(digits_model, xy):
    x, y = xy
    fooled = WrongInBf16(digits_model).eval()
    whole = strong_attack(fooled, x, y, threat=THREAT, config=QUICK_BF16, seed=2)
    journal = _MemoryJournal(stop_after=4)  # after the 3 bf16 attacks and the first fp32 one
    with pytest.raises(_Interrupted):
        strong_attack(fooled, x, y, threat=THREAT, config=QUICK_BF16, seed=2,
                      journal=journal)  # fmt: skip
    assert journal.state is not None and journal.state.contested is not None
    journal.stop_after = None
    resumed = strong_attack(fooled, x, y, threat=THREAT, config=QUICK_BF16, seed=2,
                            journal=journal)  # fmt: skip
    assert torch.equal(resumed.adversarial, whole.adversarial)
    assert resumed.broken_by == whole.broken_by and resumed.contested == whole.contested


def test_auto_searches_in_bf16_only_on_a_cpu_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(search_module, "native_bf16", lambda device: False)
    assert resolve_search("auto", cpu) == "fp32"
    monkeypatch.setattr(search_module, "native_bf16", lambda device: True)
    assert resolve_search("auto", cpu) == "bf16"
    assert resolve_search("auto", torch.device("cuda")) == "fp32"  # measured slower there
    assert resolve_search("fp32", cpu) == "fp32"
    with pytest.raises(DefpertError, match="unknown search precision 'fp16'; choose one of"):
        check_search("fp16")


def test_the_adaptive_attack_searching_in_bf16_judges_through_the_fp32_defense(digits_model, xy):
    """Every bf16 claim through the defense is refused by the fp32 defended model; the fp32
    stages then run on every contested example, and the result is the fp32 attack's."""
    from defpert.attacks.adaptive import AdaptiveConfig, adaptive_attack
    from defpert.defenses import Defense

    x, y = xy[0][:16], xy[1][:16]
    fooled = WrongInBf16(digits_model).eval()
    defense = Defense("hedge", LinfBall(0.1), steps=3, step_size=0.03)
    cfg = AdaptiveConfig(steps=5, restarts=1, unrolled_steps=2, square_queries=30, deep_restarts=1)
    fp32 = adaptive_attack(fooled, defense, x, y, threat=THREAT, config=cfg, seed=4)
    bf16 = adaptive_attack(fooled, defense, x, y, threat=THREAT, seed=4,
                           config=replace(cfg, search="bf16"))  # fmt: skip
    assert bf16["search"] == "bf16" and "search" not in fp32
    searched = {
        k: v for k, v in bf16["broken_by"].items() if k != "clean" and not k.startswith(FALLBACK)
    }
    assert searched and all(v == 0 for v in searched.values())
    assert bf16["contested"] > 0
    assert bf16["robust"] == fp32["robust"]
    assert 0 < sum(fp32["robust"]) < len(y)  # the attack broke some, not all
