"""Long work keeps its progress bar alive: redraws between updates, never a number changed."""

from __future__ import annotations

import io
import threading
import time

import torch
from tqdm.auto import tqdm

from defpert.core import engine
from defpert.core.engine import Schedule, perturb
from defpert.core.objectives import cross_entropy
from defpert.core.threat import LinfBall
from defpert.runtime import progress as bars


def bar_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "defpert-bar"]


def test_a_bar_is_redrawn_while_nothing_updates_it_and_the_redraws_stop_after():
    out = io.StringIO()
    with tqdm(total=10, file=out, mininterval=0) as bar, bars.ticking(bar, every=0.02):
        drawn = out.getvalue().count("\r")
        time.sleep(0.3)  # work that updates nothing
        assert out.getvalue().count("\r") >= drawn + 5
        assert len(bar_threads()) == 1
    assert bar_threads() == []


def test_a_disabled_bar_starts_no_thread():
    with tqdm(total=10, disable=True) as bar, bars.ticking(bar, every=0.01):
        assert bar_threads() == []


def test_the_engine_redraws_its_bar_while_a_chunk_runs(digits_model, digits_test, monkeypatch,
                                                       capsys):  # fmt: skip
    x, y = digits_test.images[:8], digits_test.labels[:8]
    real = engine.perturb_batch

    def slow_chunk(*args, **kwargs):
        time.sleep(0.5)  # one chunk of slow work: the bar gets no update meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "perturb_batch", slow_chunk)
    monkeypatch.setattr(bars, "EVERY", 0.05)
    threat = LinfBall(0.1)
    schedule = Schedule(steps=2, step_size=0.05)
    ticked = perturb(digits_model, x, y, threat=threat, objective=cross_entropy,
                     schedule=schedule, batch_size=8, progress=True)  # fmt: skip
    assert capsys.readouterr().err.count("\r") >= 6  # several redraws in half a second
    monkeypatch.setattr(engine, "perturb_batch", real)
    plain = perturb(digits_model, x, y, threat=threat, objective=cross_entropy,
                    schedule=schedule, batch_size=8, progress=False)  # fmt: skip
    assert torch.equal(ticked, plain)
