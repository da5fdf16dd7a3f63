"""PyTorch's CPU threads: the cores that other programs leave free, not every core.

PyTorch runs an operation on one thread per core, and each parallel region waits for its
slowest thread. When another program keeps a core busy, the thread that shares that core
holds up all the others. On this project's 2-core AMD EPYC (AVX2), beside one busy
single-threaded job, PGD on the ``cnn`` ran 2-3x slower at two threads than at one
(``benchmarks/threads_under_load.py``; the README's Speed section has the table).

So the ``defpert`` command sets the thread count to the cores that other programs leave
free: the load average less this process's own recent use, rounded, at least one thread.
It looks again at most every ``INTERVAL`` seconds during long work (the engine's and the
attacks' chunk loops and the training loop call ``adapt``), because other programs start
and stop. ``--threads N`` or ``$DEFPERT_THREADS`` fixes the count, and so does
``$OMP_NUM_THREADS`` (torchrun sets it for its ranks). A library user who never calls
``configure`` keeps PyTorch's own setting.

The thread count does not change results on the ``cnn``: PGD's points at one and at two
threads are bit for bit equal (``tests/test_threads.py`` checks it), because PyTorch's CPU
kernels split work over outputs, not over the sums that make one output.
"""

from __future__ import annotations

import os
import time
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


def adaptive() -> bool:
    """Whether ``adapt`` follows the load (``configure`` was called without a fixed count)."""
    return _watch is not None


def _set(count: int) -> None:
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
