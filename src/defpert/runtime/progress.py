"""Progress bars that show life between their updates.

One chunk of a defensive perturbation, or one attack of the strong suite, can take minutes
on a CPU; a bar that moves only when it ends looks frozen. ``ticking`` redraws a tqdm bar
every few seconds from a daemon thread while the work runs, so its elapsed time keeps
counting. It draws only: no number depends on it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

EVERY = 2.0  # seconds between redraws


@contextlib.contextmanager
def ticking(bar: Any, every: float | None = None) -> Iterator[Any]:
    """Redraw ``bar`` (a tqdm bar) every ``every`` seconds (``EVERY``) until the block ends."""
    if getattr(bar, "disable", False):
        yield bar
        return
    every = EVERY if every is None else every
    stop = threading.Event()

    def redraw() -> None:
        while not stop.wait(every):
            bar.refresh()  # takes tqdm's lock, as the worker's own updates do

    thread = threading.Thread(target=redraw, name="defpert-bar", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
