"""PyTorch's CPU threads: the cores that other programs leave free, not every core.

PyTorch runs an operation on one thread per core, and each parallel region waits for its
slowest thread. When another program keeps a core busy, the thread that shares that core
holds up all the others. On this project's 2-core AMD EPYC (AVX2), beside one busy
single-threaded job, PGD on the ``cnn`` ran 2-3x slower at two threads than at one
(``benchmarks/threads_under_load.py``; the README's Speed section has the table).

So the ``defpert`` command sets the thread count to the cores that other programs leave
free: the load average less this process's own recent use, rounded, at least one thread.
It looks again at most every ``INTERVAL`` seconds during long work (the engine's and the
attacks' chunk loops call ``adapt``), because other programs start and stop. ``--threads N`` or ``$DEFPERT_THREADS`` fixes the count, and so does
``$OMP_NUM_THREADS`` (torchrun sets it for its ranks). A library user who never calls
``configure`` keeps PyTorch's own setting.

The thread count does not change an attack's or a defense's points on the ``cnn``: PGD's
points at one and at two threads are bit for bit equal (``tests/test_threads.py`` checks
it), because each example's input gradient is its own sum. Training is different: a
weight's gradient sums over the batch, and how that sum is split follows the thread count
(one epoch on the digits at one and at two threads: weights apart by up to 2e-6). So
training does not follow the load: it ``hold``s ``steady_count()`` (every core, unless the
user fixed the count) for the whole run and records it, and a resumed run takes the
recorded count. The same command then gives the same weights, busy machine or not. What
made that slow beside other work was not the count but the waiting: OpenMP's threads spin
at the end of each parallel region, on the very core the late thread needs. The ``defpert``
package makes them sleep (``OMP_WAIT_POLICY=PASSIVE``, set in :mod:`defpert` before
PyTorch loads): one
training epoch beside a busy loop took 1.37x its quiet time instead of 2.85x, with the same
weights (``benchmarks/training_threads.py``; one thread instead: 1.02x, but 1.3x slower quiet).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from defpert.errors import DefpertError

ENV = "DEFPERT_THREADS"
INTERVAL = 30.0  # seconds between looks at the load during long work


@dataclass
class _Watch:
    cores: int
    looked_at: float  # time.monotonic() of the last look
    cpu_then: float  # this process's CPU seconds at that look


_watch: _Watch | None = None


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float:
    """The one-minute load average: runnable tasks, ours included (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def free_cores(cores: int, load: float, own: float) -> int:
    """Threads for the cores that other programs leave free.

    ``load`` is the load average and ``own`` the cores this process kept busy lately; the
    difference is what other programs use. At least one thread, at most ``cores``.
    """
    others = max(0.0, load - own)
    return max(1, min(cores, round(cores - others)))


def configure(requested: int | None = None) -> None:
    """Set this process's thread count: ``requested``, ``$DEFPERT_THREADS``, or (unless
    ``$OMP_NUM_THREADS`` is set) the free cores, followed by ``adapt`` from then on."""
    global _watch
    _watch = None
    value = os.environ.get(ENV)
    if requested is None and value:
        if not value.isdigit() or int(value) < 1:
            raise DefpertError(f"{ENV} must be a positive whole number, got {value!r}")
        requested = int(value)
    if requested is not None:
        if requested < 1:
            raise DefpertError(f"--threads must be at least 1, got {requested}")
        torch.set_num_threads(requested)
        return
    if os.environ.get("OMP_NUM_THREADS"):
        return  # the user's (or torchrun's) choice, which PyTorch already applied
    _watch = _Watch(available_cores(), time.monotonic(), time.process_time())
    _set(free_cores(_watch.cores, load_average(), own=0.0))


def adapt() -> None:
    """Match the thread count to the free cores again, if ``INTERVAL`` seconds have
    passed since the last look (otherwise a clock read and nothing else)."""
    watch = _watch
    if watch is None:
        return
    now = time.monotonic()
    if now - watch.looked_at < INTERVAL:
        return
    cpu = time.process_time()
    own = (cpu - watch.cpu_then) / (now - watch.looked_at)
    watch.looked_at, watch.cpu_then = now, cpu
    _set(free_cores(watch.cores, load_average(), own))


def steady_count() -> int:
    """The count for work whose numbers depend on it: the user's fixed count, else every
    core (PyTorch's default), whatever the load."""
    return available_cores() if adaptive() else torch.get_num_threads()


@contextlib.contextmanager
def hold(count: int | None = None) -> Iterator[int]:
    """Keep the thread count fixed inside (at ``count``, or the current one) and yield it,
    for work whose numbers depend on it, such as training; the count before comes back after."""
    global _watch
    saved, _watch = _watch, None
    before = torch.get_num_threads()
    if count is not None:
        _set(count)
    try:
        yield torch.get_num_threads()
    finally:
        _set(before)
        _watch = saved


def adaptive() -> bool:
    """Whether ``adapt`` follows the load (``configure`` was called without a fixed count)."""
    return _watch is not None


def _set(count: int) -> None:
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
