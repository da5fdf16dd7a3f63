"""The engine's chunk size on a CPU, measured on this machine rather than assumed.

How many images one forward-backward pass should take depends on the CPU: on a 2-core
AMD EPYC with AVX2, chunks of 64 MNIST images ran PGD on the ``cnn`` fastest (they keep a
pass's activations in cache, 2x faster than 512), while on an AVX-512 EPYC of the same
size chunks of 64 were 2-3x *slower* than whole batches of 512. So the first attack on a
CPU times a few PGD steps at each candidate size (about two seconds), keeps the fastest,
and caches the choice under the machine's identity (CPU model and flags, threads, torch
version) and the model's; later runs reuse it. ``DEFPERT_CHUNK=N`` or ``--batch-size N``
overrides it. A GPU always takes large chunks.

A measurement taken while other programs load the CPU is mostly noise (measured here: five
candidates within 13 % of each other under load, where the quiet machine separates them by
up to 40 %), so each choice is cached with the load it was measured under (the one-minute
load average per core), and a run on a clearly quieter machine measures again and keeps
the quieter measurement. A choice measured quiet is never replaced by a busier one.

Results depend on the chunk size only through float32 summation order: the engine, APGD
and FAB draw their random starts for all the examples of a run at once, and Square draws
one window per query for a fixed number of examples whatever the chunk of its forward
passes. Every ``dp`` result records the chunk used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from defpert.errors import DefpertError
from defpert.runtime import distributed
from defpert.runtime.devices import GPU_CHUNK, cpu_info, frozen_parameters
from defpert.runtime.rundir import default_cache_dir, read_json, write_json
from defpert.runtime.threads import available_cores, load_average

# Set while the candidates are timed: the pass counters (core.passes) leave those passes out,
# since they are no part of the cost of the computation that asked for a chunk size.
MEASURING: ContextVar[bool] = ContextVar("defpert_measuring_chunks", default=False)
CANDIDATES = (32, 64, 128, 256, 512)
CACHE_FILE = "calibration.json"
ENV = "DEFPERT_CHUNK"
_chosen: dict[str, int] = {}  # this process's choices, so a run measures at most once


def chunk_size(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int:
    """Images per chunk for ``model`` on ``device``: measured once per machine and model."""
    if device.type == "cuda":
        return GPU_CHUNK
    override = os.environ.get(ENV)
    if override:
        if not override.isdigit() or int(override) < 1:
            raise DefpertError(f"{ENV} must be a positive whole number, got {override!r}")
        return int(override)
    key = _key(model, input_shape)
    if key not in _chosen:
        chosen = 0
        if distributed.is_main():  # one rank measures; every rank uses its choice
            chosen = _cached(key, load_per_core()) or _measure_and_cache(
                key, model, input_shape, device
            )
        if distributed.active():
            chosen = int(distributed.from_main(torch.tensor([chosen]))[0])
        _chosen[key] = chosen
    return _chosen[key]


def measured_rate(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> float:
    """Image-steps per second of one PGD step at the chosen chunk, as measured on this
    machine (measuring first if needed); 0 where unknown (a GPU, an override, no cache)."""
    if device.type == "cuda" or os.environ.get(ENV):
        return 0.0
    chunk = chunk_size(model, input_shape, device)
    try:
        entry = read_json(default_cache_dir() / CACHE_FILE).get(_key(model, input_shape), {})
        return float(entry.get("image_steps_per_second", {}).get(str(chunk), 0.0))
    except (OSError, DefpertError, ValueError, AttributeError, TypeError):
        return 0.0


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    candidates: tuple[int, ...] = CANDIDATES,
    seconds: float = 0.4,
    rounds: int = 5,
) -> dict[int, float]:
    """Image-steps per second of one PGD step (forward, backward to the input) per chunk
    size: the candidates interleaved over ``rounds`` rounds, each timed for about
    ``seconds`` in all, the median kept (a busy machine slows every candidate alike)."""
    rates: dict[int, list[float]] = {c: [] for c in candidates}
    with _measuring(), frozen_parameters(model), torch.enable_grad():
        for _ in range(rounds):
            for size in candidates:
                x = torch.rand(size, *input_shape, device=device, requires_grad=True)
                y = torch.zeros(size, dtype=torch.long, device=device)
                done, started = 0, time.perf_counter()
                while True:
                    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x)
                    grad.sign_()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    done += size
                    elapsed = time.perf_counter() - started
                    if elapsed >= seconds / rounds:
                        break
                rates[size].append(done / elapsed)
    return {size: statistics.median(r) for size, r in rates.items()}


@contextlib.contextmanager
def _measuring() -> Iterator[None]:
    token = MEASURING.set(True)
    try:
        yield
    finally:
        MEASURING.reset(token)


def _measure_and_cache(
    key: str, model: nn.Module, input_shape: tuple[int, ...], device: torch.device
) -> int:
    training = model.training
    model.eval()
    load = load_per_core()
    try:
        rates = measure(model, input_shape, device)
    finally:
        model.train(training)
    best = max(rates, key=lambda size: rates[size])
    path = default_cache_dir() / CACHE_FILE
    try:
        try:
            cache = read_json(path) if path.is_file() else {}
        except DefpertError:
            cache = {}  # an unreadable cache is measured again and replaced
        if not isinstance(cache, dict):
            cache = {}  # valid JSON of another shape (e.g. []) too
        cache[key] = {"chunk": best, "image_steps_per_second": {str(k): round(v) for k, v in rates.items()},
                      "cpu": cpu_info(), "threads": torch.get_num_threads(),
                      "load_per_core": round(load, 2),
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        write_json(path, cache)
    except (OSError, DefpertError, ValueError):
        pass  # an unwritable cache only means measuring again next time
    return best


def _cached(key: str, load_now: float) -> int:
    """The cached choice, unless it was measured on a clearly busier machine than now (or
    under an unknown load): then 0, so that it is measured again."""
    path = default_cache_dir() / CACHE_FILE
    try:
        entry = read_json(path).get(key, {}) if path.is_file() else {}
        measured_under = float(entry.get("load_per_core", float("inf")))
        if measured_under > load_now + BUSIER:
            return 0
        return int(entry.get("chunk", 0))
    except (OSError, DefpertError, ValueError, AttributeError, TypeError):
        return 0


# How much busier (load average per core) a cached measurement may have been than now.
BUSIER = 0.5


def load_per_core() -> float:
    """The one-minute load average per core this process may use (0 where the system does not
    say): the same cores that the thread count is chosen from."""
    return load_average() / available_cores()


def _key(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The machine and the model's structure (not its weights: speed does not depend on them)."""
    identity: dict[str, Any] = {
        "cpu": cpu_info(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": repr(model), "input": list(input_shape),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
