"""Shared helpers for the benchmarks: interleaved timing, the machine's arithmetic limit.

Every benchmark measures defpert and its peers in ONE process, interleaved A/B/A/B, and
reports medians, so a busy machine slows both alike and the ratio stays meaningful.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def interleaved(
    runs: dict[str, Callable[[], Any]], *, reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each callable, run in turn ``reps`` times after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
            synchronize()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            synchronize()  # a GPU's work is queued: time it done, not launched
            seconds[name].append(time.perf_counter() - start)
    return seconds


def synchronize() -> None:
    """Wait for the GPU's queued work (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_gflops(size: int = 2048, reps: int = 5, device: str | torch.device = "cpu") -> float:
    """The device's measured fp32 matmul rate (GFLOP/s): the arithmetic limit."""
    if torch.device(device).type == "cuda":
        size = 8192  # a small product cannot fill a GPU
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / median(times) / 1e9


def flops_per_image_step(model: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one attack step for one image: forward plus the gradient to the input."""
    x = torch.rand(8, *input_shape)
    y = torch.zeros(8, dtype=torch.long)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            delta = torch.zeros_like(x, requires_grad=True)
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            torch.autograd.grad(loss, delta)
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return counter.get_total_flops() / 8


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how busy the machine was when they started.

    ``cpu`` names the model and the flags that decide the speed levers (AVX2, AVX-512,
    AVX512_BF16, AMX); ``load_average`` (1 minute) above ~0.5 per core means other programs
    shared the CPU.
    """
    from defpert.runtime.devices import cpu_info

    info = cpu_info()
    flags = [f.upper() for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if info[f]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": f"{info['model']} ({info['cores']} cores; {', '.join(flags) or 'no AVX2'})",
        "load_average": load,
        "quiet": load is not None and load < 0.5 * (info["cores"] or 1),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def emit(result: dict[str, Any], path: str | None) -> None:
    """Print the JSON result, and write it to ``path`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    sys.stdout.flush()
