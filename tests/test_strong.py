"""The strong suite (tiers, cascade, seeds) and the adaptive attack through a reactive defense."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
import torch

from defpert.attacks import StrongConfig, apgd, fab, square, strong_attack
from defpert.attacks import journal as journal_module
from defpert.attacks import strong as strong_module
from defpert.attacks.adaptive import AdaptiveConfig, adaptive_attack
from defpert.core.evaluate import accuracy, correct
from defpert.core.threat import L2Ball, LinfBall
from defpert.defenses.methods import DefendedModel, Defense
from defpert.errors import DefpertError
from defpert.testing import GradientMasked

THREATS = [LinfBall(0.1), L2Ball(0.6)]
# Each tier with shortened lengths: the tier's attacks, in seconds on the digits.
SHORT = {"steps": 10, "square_queries": 100}


@pytest.fixture(scope="module")
def xy(digits_test):
    return digits_test.images[:60], digits_test.labels[:60]


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
@pytest.mark.parametrize("tier", ["quick", "standard", "plus"])
def test_each_tier_runs_and_repeats_for_a_seed(digits_model, xy, threat, tier):
    x, y = xy
    cfg = StrongConfig(tier=tier, **SHORT)
    first = strong_attack(digits_model, x, y, threat=threat, config=cfg, seed=3)
    again = strong_attack(digits_model, x, y, threat=threat, config=cfg, seed=3)
    assert torch.equal(first.adversarial, again.adversarial)
    assert first.broken_by == again.broken_by
    assert first.accuracy < accuracy(digits_model, x, y) - 0.2  # it really attacks
    assert first.max_perturbation <= threat.eps + 1e-5
    assert ((first.adversarial >= 0) & (first.adversarial <= 1)).all()
    assert torch.equal(first.robust, correct(digits_model, first.adversarial, y))
    names = [name for name, _ in cfg.plan()]
    assert set(first.broken_by) <= {"clean", *names}
    if tier != "quick":
        assert {"apgd-ce", "apgd-t", "fab-t"} <= set(names) and "square-100" in names


def test_cascade_attacks_only_unbroken_examples(digits_model, xy, monkeypatch):
    x, y = xy
    threat = LinfBall(0.1)
    seen: list[tuple[str, int, int]] = []
    real_plan = StrongConfig.plan

    def spied_plan(self):
        def spy(name, attack):
            def run(m, xi, yi, t, g, a, r):
                # every example handed to an attack is still classified correctly
                still = int(correct(m, xi, yi).sum())
                seen.append((name, len(xi), still))
                return attack(m, xi, yi, t, g, a, r)

            return run

        return [(name, spy(name, attack)) for name, attack in real_plan(self)]

    monkeypatch.setattr(strong_module.StrongConfig, "plan", spied_plan)
    weak = apgd(digits_model, x, y, threat=threat, steps=5)
    result = strong_attack(digits_model, x, y, threat=threat, known_adversarial=[weak],
                           config=StrongConfig(tier="standard", **SHORT))  # fmt: skip
    assert seen, "no attack ran"
    robust_before = int(correct(digits_model, weak, y).sum())
    assert seen[0][1] == robust_before  # the first attack sees only what the weak left
    for (_, n, still), nxt in zip(seen, seen[1:] + [None], strict=True):
        assert n == still
        if nxt is not None:
            assert nxt[1] <= n
    assert int(result.robust.sum()) <= robust_before


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_each_attack_stays_in_the_ball(digits_model, xy, threat):
    x, y = xy
    g = torch.Generator().manual_seed(0)
    for adv in (
        apgd(
            digits_model, x, y, threat=threat, steps=10, loss="dlr-targeted", targets=2, generator=g
        ),
        fab(digits_model, x, y, threat=threat, steps=10, targets=2, generator=g),
        square(digits_model, x, y, threat=threat, queries=50, generator=g),
    ):
        assert (threat.size(adv - x) <= threat.eps + 1e-5).all()
        assert ((adv >= 0) & (adv <= 1)).all()
        assert accuracy(digits_model, adv, y) < accuracy(digits_model, x, y)


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_random_draws_do_not_depend_on_the_chunk_size(digits_model, xy, threat):
    # The engine's chunk is calibrated per machine: a seed must give the same points on
    # every machine, so each example's random starts cannot depend on how rows are chunked.
    x, y = xy

    def attacks(batch_size: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return [
            apgd(digits_model, x, y, threat=threat, steps=5, loss="dlr-targeted", targets=2,
                 restarts=2, generator=g, batch_size=batch_size),
            fab(digits_model, x, y, threat=threat, steps=5, targeted=False, restarts=2,
                generator=g, batch_size=batch_size),
            square(digits_model, x, y, threat=threat, queries=30, generator=g,
                   forward_chunk=batch_size),
        ]  # fmt: skip

    whole, chunked = attacks(64), attacks(7)
    for a, b in zip(whole, chunked, strict=True):
        assert not torch.equal(a, x)
        assert torch.allclose(a, b, atol=1e-4)
        assert torch.equal(correct(digits_model, a, y), correct(digits_model, b, y))


def test_square_breaks_a_model_with_zero_gradients(digits_model, xy):
    x, y = xy
    masked = GradientMasked(digits_model, levels=16)
    threat = LinfBall(0.15)
    clean = accuracy(masked, x, y)
    blind = accuracy(masked, apgd(masked, x, y, threat=threat, steps=20), y)
    assert blind >= clean - 0.05  # only its random start moves anything
    assert accuracy(masked, square(masked, x, y, threat=threat, queries=300), y) < blind - 0.2


def test_unknown_tier_is_refused():
    with pytest.raises(DefpertError, match="unknown strong-attack tier 'huge'"):
        StrongConfig(tier="huge")


def test_adaptive_attack_breaks_a_defense_gradients_cannot(digits_model, xy):
    # The classifier hides its gradients behind a quantiser, so BPDA, APGD and the unrolled
    # defense get zero gradients; only the black-box stage through the defense can break it.
    x, y = xy[0][:40], xy[1][:40]
    masked = GradientMasked(digits_model, levels=16)
    defense = Defense("hedge", LinfBall(0.1), steps=3, step_size=0.03)
    threat = LinfBall(0.15)
    short = {"steps": 10, "restarts": 1, "unrolled_steps": 3}
    blind = adaptive_attack(masked, defense, x, y, threat=threat,
                            config=AdaptiveConfig(**short, square_queries=0))  # fmt: skip
    full = adaptive_attack(masked, defense, x, y, threat=threat,
                           config=AdaptiveConfig(**short, square_queries=300))  # fmt: skip
    clean = accuracy(DefendedModel(masked, defense, mode="bpda"), x, y)
    assert blind["accuracy"] >= clean - 0.1  # random starts only
    assert full["accuracy"] < blind["accuracy"] - 0.2
    assert full["broken_by"]["square-300"] > 0
    assert sum(full["broken_by"].values()) == round((1 - full["accuracy"]) * len(y))


def test_adaptive_attack_counts_the_clean_input_and_transfer(digits_model, xy):
    x, y = xy[0][:40], xy[1][:40]
    defense = Defense("hedge", LinfBall(0.1), steps=3, step_size=0.03)
    threat = LinfBall(0.15)
    wrong = torch.zeros_like(x)  # a blank image: misclassified for most labels
    result = adaptive_attack(digits_model, defense, x, y, threat=threat, known={"given": x + 0.0},
                             config=AdaptiveConfig(steps=5, restarts=1, unrolled_steps=2,
                                                   square_queries=0))  # fmt: skip
    defended = DefendedModel(digits_model, defense, mode="bpda")
    assert result["broken_by"]["clean"] == int((~correct(defended, x, y)).sum())
    assert result["broken_by"]["transfer-given"] == 0  # the same points, already counted
    del wrong
    assert result["accuracy"] < accuracy(defended, x, y)
    assert result["config"]["eot"] == 1 and "deterministic" in result["config"]["eot_note"]


def test_unrolled_linf_defense_passes_a_gradient(digits_model, xy):
    # The L-inf sign step has zero derivative; the straight-through step must not.
    x = xy[0][:8].clone().requires_grad_(True)
    defense = Defense("hedge", LinfBall(0.1), steps=2, step_size=0.05)
    unrolled = DefendedModel(digits_model, defense, mode="unrolled")
    bpda = DefendedModel(digits_model, defense, mode="bpda")
    g_unrolled = torch.autograd.grad(unrolled(x)[:, 0].sum(), x)[0]
    x2 = x.detach().clone().requires_grad_(True)
    g_bpda = torch.autograd.grad(bpda(x2)[:, 0].sum(), x2)[0]
    assert (g_unrolled - g_bpda).abs().max() > 1e-4  # differs from BPDA by more than rounding


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
def test_both_balls_projection_is_feasible_and_keeps_feasible_points(threat):
    from defpert.core.threat import clip_to_both_balls

    g = torch.Generator().manual_seed(0)
    natural = torch.rand(64, 1, 8, 8, generator=g)
    defended = (natural + threat.random_init(natural.shape, g)).clamp(0, 1)  # within eps
    wild = 3 * threat.random_init(natural.shape, g)
    delta = clip_to_both_balls(defended, wild, natural, threat)
    point = defended + delta
    assert (threat.size(point - defended) <= threat.eps * (1 + 1e-5)).all()
    assert (threat.size(point - natural) <= threat.eps * (1 + 1e-5)).all()
    assert ((point >= 0) & (point <= 1)).all()
    again = clip_to_both_balls(defended, delta, natural, threat)  # a feasible point stays put
    assert torch.allclose(again, delta, atol=1e-5)


@pytest.mark.parametrize("threat", THREATS, ids=["linf", "l2"])
@pytest.mark.parametrize("attack", ["square", "fab"])
def test_black_box_and_fab_search_inside_both_balls(digits_model, digits_test, threat, attack):
    # With the budget also measured from the natural image, a point found in the defended
    # point's ball and projected afterwards may fool nothing: Square's queries must stay in
    # the intersection, and FAB must keep each misclassified iterate that still fools once
    # projected there (not only its nearest boundary point, projected at the end).
    from defpert.attacks._common import project
    from defpert.attacks.fab import fab
    from defpert.defenses.methods import defend

    x, y = digits_test.images[:200], digits_test.labels[:200]
    x_def = defend(digits_model, x, y, Defense("ce", threat, steps=10, step_size=threat.eps / 4))

    def run(anchor: torch.Tensor | None) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        if attack == "square":
            return square(digits_model, x_def, y, threat=threat, queries=300, anchor=anchor,
                          generator=g)  # fmt: skip
        return fab(digits_model, x_def, y, threat=threat, steps=30, anchor=anchor, generator=g)

    inside = run(x)
    assert (threat.size(inside - x) <= threat.eps * (1 + 1e-5)).all()
    assert (threat.size(inside - x_def) <= threat.eps * (1 + 1e-5)).all()
    projected = project(threat, x_def, run(None), x)  # searched outside, then projected
    broken_inside = int((~correct(digits_model, inside, y)).sum())
    assert broken_inside > int((~correct(digits_model, projected, y)).sum())


@pytest.mark.parametrize("budget_from", ["defended", "original"])
def test_budget_from_sets_the_distance_to_the_natural_image(digits_model, digits_test, budget_from):
    from defpert.study.dp import DPConfig, run_dp

    # a weak attack too short to break anything: the strong suite's own points are measured
    config = DPConfig(norm="linf", eps=0.1, steps=1, step_size=0.002, defenses=("ce",),
                      defense_steps=5, defense_step_size=0.03, strong_tier="quick", strong_steps=5,
                      square_queries=20, strong_limit=40, adaptive_limit=0, budget_from=budget_from)  # fmt: skip
    (result,) = run_dp(digits_model, digits_test.head(40), config)
    far = result["max_from_natural"]
    assert result["threat"]["budget_from"] == budget_from
    broken = result["strong"]["broken_by"]["defensive"]
    assert sum(v for k, v in broken.items() if k not in ("clean", "weak")) > 0
    if budget_from == "original":
        assert max(far.values()) <= 0.1 + 1e-5
    else:  # man-in-the-middle: the defended point's budget adds to the attack's
        assert far["weak"] > 0.1 + 1e-3


def test_defended_points_face_the_bare_models_points_transferred(digits_model, digits_test):
    from defpert.study.dp import DPConfig, run_dp

    config = DPConfig(norm="linf", eps=0.1, steps=5, step_size=0.03, defenses=("ce",),
                      strong_tier="quick", strong_steps=5, square_queries=20, strong_limit=40,
                      adaptive_limit=0)  # fmt: skip
    (result,) = run_dp(digits_model, digits_test.head(40), config)
    broken = result["strong"]["broken_by"]["defensive"]
    assert list(broken)[:4] == ["clean", "weak", "transfer-weak", "transfer-strong"]
    robust = result["accuracy"]["defensive_attacked_strong"]
    assert sum(broken.values()) == round(40 * (1 - robust))


class _Interrupted(Exception):
    """Stands for a kill between two attacks of the cascade."""


class _MemoryJournal:
    """Keeps the cascade's last state; raises after ``stop_after`` writes (a kill). A running
    attack leaves a bookmark at every point it can (``interval`` 0)."""

    interval = 0.0

    def __init__(self, stop_after: int | None = None) -> None:
        self.state: journal_module.CascadeState | None = None
        self.writes = 0
        self.stop_after = stop_after

    def read(self):
        return self.state

    def write(self, state):
        self.state = journal_module.CascadeState(
            list(state.done), state.worst.clone(), state.robust.clone(), dict(state.broken_by),
            dict(state.seconds), state.generator.clone(), state.running and journal_module.Bookmark(
                dict(state.running.position),
                {k: v.clone() for k, v in state.running.tensors.items()},
            ), None if state.contested is None else state.contested.clone(),
        )  # fmt: skip
        self.writes += 1
        if self.writes == self.stop_after:
            raise _Interrupted


def _noise(m, x, y, t, g, a, r=None):
    """A random corner of the L-inf ball: its result depends on the generator's state."""
    return (x + t.eps * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)


def test_an_interrupted_cascade_continues_to_the_uninterrupted_result(
    digits_model, xy, monkeypatch
):
    x, y = xy
    threat = LinfBall(0.25)
    ran: list[tuple[str, int]] = []

    def plan(self):
        def spy(name):
            def run(m, xi, yi, t, g, a, r):
                ran.append((name, len(xi)))
                return _noise(m, xi, yi, t, g, a)

            return run

        return [(name, spy(name)) for name in ("noise-a", "noise-b", "noise-c", "noise-d")]

    monkeypatch.setattr(strong_module.StrongConfig, "plan", plan)
    cfg = StrongConfig(tier="standard")
    whole = strong_attack(digits_model, x, y, threat=threat, config=cfg, seed=5)
    assert whole.broken_by["noise-c"] > 0 and whole.broken_by["noise-d"] > 0
    journal = _MemoryJournal(stop_after=2)
    with pytest.raises(_Interrupted):
        strong_attack(digits_model, x, y, threat=threat, config=cfg, seed=5, journal=journal)
    assert journal.state is not None and journal.state.done == ["noise-a", "noise-b"]
    ran.clear()
    resumed = strong_attack(digits_model, x, y, threat=threat, config=cfg, seed=5, journal=journal)
    assert [name for name, _ in ran] == ["noise-c", "noise-d"]  # finished ones are not rerun
    assert torch.equal(resumed.adversarial, whole.adversarial)
    assert torch.equal(resumed.robust, whole.robust)
    assert resumed.broken_by == whole.broken_by
    assert set(resumed.seconds) == set(whole.seconds)


@pytest.mark.parametrize("threat", [LinfBall(0.15), L2Ball(1.5)], ids=["linf", "l2"])
@pytest.mark.parametrize("inside", ["apgd-t", "square"])
def test_an_attack_interrupted_inside_continues_from_its_bookmark(
    digits_model, xy, threat, inside, monkeypatch
):
    apgd_module = importlib.import_module("defpert.attacks.apgd")  # the name is the function's
    x, y = xy
    masked = GradientMasked(digits_model, levels=16)  # APGD runs every target; Square breaks
    cfg = StrongConfig(tier="quick", steps=5, square_queries=300)
    targeted_runs: list[int] = []
    real_run = apgd_module._single_run

    def counted(model, xi, yi, target, *rest, **kw):
        if target is not None:
            targeted_runs.append(len(xi))
        return real_run(model, xi, yi, target, *rest, **kw)

    monkeypatch.setattr(apgd_module, "_single_run", counted)
    whole = strong_attack(masked, x, y, threat=threat, config=cfg, seed=4)
    assert len(targeted_runs) == 3 and whole.broken_by["square-300"] > 0
    # writes: APGD-CE's bookmark and its end, APGD-T's 3 bookmarks and its end, then Square
    stop = 3 if inside == "apgd-t" else 6 + 150
    journal = _MemoryJournal(stop_after=stop)
    with pytest.raises(_Interrupted):
        strong_attack(masked, x, y, threat=threat, config=cfg, seed=4, journal=journal)
    mark = journal.state.running
    assert journal.state.done == (["apgd-ce"] if inside == "apgd-t" else ["apgd-ce", "apgd-t"])
    if inside == "apgd-t":
        assert mark.position == {"runs_done": 1}
    else:
        assert mark.position == {"part": 0, "restart": 0, "query": 150}
        # Square still had examples to break after the bookmark
        assert int((mark.tensors["run_margin"] <= 0).sum()) < whole.broken_by["square-300"]
    targeted_runs.clear()
    journal.stop_after = None
    resumed = strong_attack(masked, x, y, threat=threat, config=cfg, seed=4, journal=journal)
    assert len(targeted_runs) == (2 if inside == "apgd-t" else 0)  # only what was left
    assert torch.equal(resumed.adversarial, whole.adversarial)
    assert torch.equal(resumed.robust, whole.robust)
    assert resumed.broken_by == whole.broken_by
    assert set(resumed.seconds) == set(whole.seconds)


def test_fab_interrupted_after_a_run_continues_from_its_bookmark(digits_model, xy, monkeypatch):
    fab_module = importlib.import_module("defpert.attacks.fab")  # the name is the function's
    calls: list[int] = []
    real_run = fab_module._single_run
    monkeypatch.setattr(fab_module, "_single_run", lambda *a: calls.append(1) or real_run(*a))
    x, y = xy
    kw = {"threat": LinfBall(0.08), "steps": 5, "targets": 3, "restarts": 2}
    whole = fab(digits_model, x, y, generator=torch.Generator().manual_seed(1), **kw)
    whole_calls = len(calls)
    g = torch.Generator().manual_seed(1)
    kept: list[tuple[journal_module.Bookmark, torch.Tensor, int]] = []

    def kill_after_three(mark):
        kept.append((journal_module.Bookmark(dict(mark.position),
                                            {k: v.clone() for k, v in mark.tensors.items()}),
                     g.get_state(), len(calls)))  # fmt: skip
        if len(kept) == 3:
            raise _Interrupted

    calls.clear()
    with pytest.raises(_Interrupted):
        fab(
            digits_model,
            x,
            y,
            generator=g,
            resume=strong_module.Resume(None, kill_after_three, 0.0),
            **kw,
        )
    mark, state, calls_before = kept[-1]
    assert mark.position == {"runs_done": 3}
    g.set_state(state)
    calls.clear()
    again = fab(
        digits_model,
        x,
        y,
        generator=g,
        resume=strong_module.Resume(mark, lambda m: None, 0.0),
        **kw,
    )
    assert not torch.equal(whole, x) and torch.equal(again, whole)
    assert len(calls) == whole_calls - calls_before > 0  # only the runs left, from the bookmark


def test_a_journal_of_another_cascade_is_not_continued(digits_model, xy):
    x, y = xy
    threat = LinfBall(0.06)
    cfg = StrongConfig(tier="quick", **SHORT)
    journal = _MemoryJournal()
    strong_attack(digits_model, x[:20], y[:20], threat=threat, config=cfg, journal=journal)
    whole = strong_attack(digits_model, x, y, threat=threat, config=cfg)
    other = strong_attack(digits_model, x, y, threat=threat, config=cfg, journal=journal)
    assert torch.equal(other.adversarial, whole.adversarial)  # 20 examples' state: ignored


def test_an_interrupted_adaptive_attack_continues_to_the_uninterrupted_result(digits_model, xy):
    x, y = xy[0][:40], xy[1][:40]
    masked = GradientMasked(digits_model, levels=16)  # only Square (last) breaks it
    defense = Defense("hedge", LinfBall(0.1), steps=3, step_size=0.03)
    threat = LinfBall(0.15)
    cfg = AdaptiveConfig(steps=5, restarts=1, unrolled_steps=2, square_queries=300)
    whole = adaptive_attack(masked, defense, x, y, threat=threat, config=cfg, seed=2)
    assert whole["broken_by"]["square-300"] > 0
    stages = list(whole["seconds"])  # every stage ran: only Square breaks anything
    assert stages[-2:] == ["unrolled-margin", "square-300"]
    journal = _MemoryJournal(stop_after=len(stages) - 2)
    journal.interval = float("inf")  # no bookmarks inside a stage: stage by stage
    with pytest.raises(_Interrupted):
        adaptive_attack(masked, defense, x, y, threat=threat, config=cfg, seed=2, journal=journal)
    assert journal.state is not None and journal.state.done == stages[:-2]
    journal.stop_after, journal.writes = None, 0
    resumed = adaptive_attack(masked, defense, x, y, threat=threat, config=cfg, seed=2,
                              journal=journal)  # fmt: skip
    assert journal.writes == 2  # the last unrolled stage and Square: those done are not rerun
    assert resumed["robust"] == whole["robust"]
    assert resumed["broken_by"] == whole["broken_by"]
    assert set(resumed["seconds"]) == set(whole["seconds"])


class _StopInsideSquare(_MemoryJournal):
    """A kill at Square's bookmark before query 100."""

    def write(self, state):
        super().write(state)
        if state.running is not None and state.running.position.get("query") == 100:
            raise _Interrupted


def test_an_adaptive_attack_interrupted_inside_square_continues_from_its_bookmark(digits_model, xy):
    x, y = xy[0][:40], xy[1][:40]
    masked = GradientMasked(digits_model, levels=16)  # only Square (last) breaks it
    defense = Defense("hedge", LinfBall(0.1), steps=3, step_size=0.03)
    kw = {"threat": LinfBall(0.15), "seed": 2,
          "config": AdaptiveConfig(steps=5, restarts=1, unrolled_steps=2, square_queries=300)}  # fmt: skip
    whole = adaptive_attack(masked, defense, x, y, **kw)
    journal = _StopInsideSquare()
    with pytest.raises(_Interrupted):
        adaptive_attack(masked, defense, x, y, journal=journal, **kw)
    assert journal.state.done[-1] == "unrolled-margin" and journal.state.running is not None
    broken_before = int((journal.state.running.tensors["run_margin"] <= 0).sum())
    assert broken_before < whole["broken_by"]["square-300"]  # Square still had work to do
    resumed = adaptive_attack(masked, defense, x, y, journal=journal, **kw)
    assert resumed["robust"] == whole["robust"] and resumed["broken_by"] == whole["broken_by"]


def test_square_interrupted_in_a_later_chunk_continues_from_its_bookmark(digits_model, xy):
    x, y = xy
    masked = GradientMasked(digits_model, levels=16)
    kw = {"threat": LinfBall(0.15), "queries": 60, "restarts": 2, "batch_size": 20}
    whole = square(masked, x, y, generator=torch.Generator().manual_seed(7), **kw)
    g = torch.Generator().manual_seed(7)
    kept: list[tuple[journal_module.Bookmark, torch.Tensor]] = []

    def kill_in_chunk_two(mark):
        kept.append((journal_module.Bookmark(dict(mark.position),
                                            {k: v.clone() for k, v in mark.tensors.items()}),
                     g.get_state()))  # fmt: skip
        if mark.position["part"] == 1 and mark.position["query"] == 30:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        square(
            masked,
            x,
            y,
            generator=g,
            resume=strong_module.Resume(None, kill_in_chunk_two, 0.0),
            **kw,
        )
    mark, state = kept[-1]
    g.set_state(state)
    again = square(
        masked, x, y, generator=g, resume=strong_module.Resume(mark, lambda m: None, 0.0), **kw
    )
    assert not torch.equal(whole, x) and torch.equal(again, whole)


class _TwoStep(torch.nn.Module):
    """A toy classifier on 8x8 images: class 1 needs the top half's mean pixel past 0.5
    (t > 0); near t = 0.04 the bottom half's mean b counts as well. Its margin (class 1
    over class 0) is 50 (0.04 - |t - 0.04|), plus 50 clamp(b - 0.5, 0, 0.15) near the peak;
    two more classes never win."""

    def forward(self, x):
        t = x[:, :, :4].mean(dim=(1, 2, 3)) - 0.5
        b = x[:, :, 4:].mean(dim=(1, 2, 3)) - 0.5
        near = ((t - 0.04).abs() < 0.015).float()
        m = 50 * (0.04 - (t - 0.04).abs()) + 50 * near * b.clamp(0, 0.15)
        low = torch.full_like(m, -20.0)
        return torch.stack([-m / 2, m / 2, low, low], 1)


class _UndoShallow:
    """A toy reactive defense: an input the model puts in class 1 by fewer than 4.5 logits
    (just past the boundary) is replaced by an image deep in class 0; a deeper one is kept.
    Its gradient is zero wherever it acts, so BPDA and the unrolled attack get nothing
    there; only a point found on the bare model and pushed deep gets through."""

    def wrap(self, model, mode):
        class Wrapped(torch.nn.Module):
            def forward(self, x):
                with torch.no_grad():
                    logits = model(x)
                gap = logits[:, 1] - logits[:, 0]
                shallow = ((gap > 0) & (gap < 4.5)).view(-1, 1, 1, 1)
                home = torch.full_like(x[:1], 0.5)
                home[:, :, :4] = 0.3
                d = torch.where(shallow, home.expand_as(x), x)
                return model(x + (d - x).detach()) if mode == "bpda" else model(d)

        return Wrapped()


def _toy_inputs():
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.04 * (torch.rand(16, 1, 8, 8, generator=g) - 0.5)
    x[:, :, :4] += 0.45 - x[:, :, :4].mean(dim=(1, 2, 3), keepdim=True)
    x[:, :, 4:] += 0.5 - x[:, :, 4:].mean(dim=(1, 2, 3), keepdim=True)
    return x, torch.zeros(16, dtype=torch.long)


def test_the_adaptive_attack_breaks_a_defense_that_only_undoes_shallow_points():
    # Measured: without the deep candidates (the adaptive attack before them) all 16 stay
    # robust: the strong suite's first crossings are undone, BPDA and the unrolled attack
    # get a zero gradient; the deep candidates break all 16.
    model, defense = _TwoStep(), _UndoShallow()
    x, y = _toy_inputs()
    threat = LinfBall(0.15)
    exact = defense.wrap(model, "bpda")
    assert bool(correct(exact, x, y).all())
    strong = strong_attack(model, x, y, threat=threat, config=StrongConfig(square_queries=100))
    assert strong.accuracy == 0.0  # the bare model has no robustness at all
    assert bool(correct(exact, strong.adversarial, y).all())  # its first crossings are undone
    cfg = AdaptiveConfig(square_queries=0)
    shallow = adaptive_attack(model, defense, x, y, threat=threat, known={"strong": strong.adversarial},
                              config=replace(cfg, deep_restarts=0))  # fmt: skip
    assert shallow["accuracy"] == 1.0
    result = adaptive_attack(model, defense, x, y, threat=threat,
                             known={"strong": strong.adversarial}, config=cfg)  # fmt: skip
    assert result["accuracy"] == 0.0
    assert sum(v for k, v in result["broken_by"].items() if k.startswith("deep-")) == 16


def test_the_adaptive_attack_is_never_above_the_strong_points_through_the_defense(digits_model, xy):
    x, y = xy[0][:40], xy[1][:40]
    defense = Defense("hedge", LinfBall(0.1), steps=3, step_size=0.03)
    threat = LinfBall(0.15)
    strong = strong_attack(digits_model, x, y, threat=threat, config=StrongConfig(**SHORT))
    through = correct(defense.wrap(digits_model, "bpda"), strong.adversarial, y)
    cfg = AdaptiveConfig(steps=10, restarts=1, unrolled_steps=2, square_queries=0, deep_restarts=1)
    runs = [adaptive_attack(digits_model, defense, x, y, threat=threat,
                            known={"strong": strong.adversarial}, config=cfg, seed=3)
            for _ in range(2)]  # fmt: skip
    robust = torch.tensor(runs[0]["robust"])
    assert not bool((robust & ~through).any())  # robust only where the strong point failed
    assert runs[0]["robust"] == runs[1]["robust"]  # same seed, same result
    assert runs[0]["broken_by"] == runs[1]["broken_by"]


def test_deep_apgd_keeps_the_highest_loss_point(digits_model, xy):
    x, y = xy[0][:30], xy[1][:30]
    threat = LinfBall(0.15)
    first = apgd(
        digits_model, x, y, threat=threat, steps=20, generator=torch.Generator().manual_seed(0)
    )
    deep = apgd(digits_model, x, y, threat=threat, steps=20, keep="highest",
                generator=torch.Generator().manual_seed(0))  # fmt: skip
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        lf = ce(digits_model(first), y, reduction="none")
        ld = ce(digits_model(deep), y, reduction="none")
    assert bool((ld >= lf - 1e-5).all()) and float(ld.mean()) > float(lf.mean()) + 1.0
    assert float((deep - x).abs().amax()) <= 0.15 + 1e-6
    with pytest.raises(DefpertError, match="one untargeted run"):
        apgd(digits_model, x, y, threat=threat, restarts=2, keep="highest")
