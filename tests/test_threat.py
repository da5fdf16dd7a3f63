import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defpert.core.threat import L2Ball, LinfBall, clip_to_box, make_threat, validate_schedule
from defpert.errors import DefpertError


@settings(max_examples=60, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(1e-4, 0.99),
    scale=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**16),
)
def test_projection_lands_in_ball_and_box_and_is_idempotent(norm, eps, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 5, 5, generator=g)
    delta = torch.randn(3, 1, 5, 5, generator=g) * scale
    threat = make_threat(norm, eps)
    once = clip_to_box(x, threat.project(delta))
    assert (threat.size(once) <= eps * (1 + 1e-5) + 1e-7).all()
    assert ((x + once) >= 0).all() and ((x + once) <= 1).all()
    twice = clip_to_box(x, threat.project(once))
    assert torch.allclose(once, twice, atol=1e-6)


@pytest.mark.parametrize("threat", [LinfBall(0.3), L2Ball(2.0)])
def test_random_init_inside_ball(threat):
    d = threat.random_init(torch.Size([500, 1, 8, 8]), torch.Generator().manual_seed(0))
    assert (threat.size(d) <= threat.eps * (1 + 1e-6)).all()


def test_l2_random_init_is_uniform_over_the_ball():
    # For a uniform point in a d-ball, E[r / eps] = d / (d + 1); a uniform radius gives 1/2.
    d = L2Ball(1.0).random_init(torch.Size([2000, 1, 4, 4]), torch.Generator().manual_seed(0))
    mean_radius = float(d.flatten(1).norm(dim=1).mean())
    assert mean_radius == pytest.approx(16 / 17, abs=0.01)


def test_steps_have_the_requested_length():
    grad = torch.randn(4, 1, 6, 6)
    assert torch.allclose(LinfBall(0.1).step(grad, 0.01).abs(), torch.full_like(grad, 0.01))
    assert torch.allclose(L2Ball(1.0).step(grad, 0.5).flatten(1).norm(dim=1), torch.full((4,), 0.5))


@pytest.mark.parametrize(
    ("norm", "eps", "message"),
    [
        ("linf", 0.0, "positive"),
        ("l2", -1.0, "positive"),
        ("linf", math.nan, "positive"),
        ("linf", 2.5, "did you mean an L2 radius"),
        ("l1", 0.1, "unknown norm 'l1'"),
    ],
)
def test_bad_threat_models(norm, eps, message):
    with pytest.raises(DefpertError, match=message):
        make_threat(norm, eps)


@pytest.mark.parametrize(("steps", "size"), [(0, 0.1), (-3, 0.1), (5, 0.0), (5, -0.1)])
def test_bad_schedules(steps, size):
    with pytest.raises(DefpertError):
        validate_schedule(steps, size)
