"""Choosing where tensors live: a GPU when present, unless the user says otherwise."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from defpert.errors import DefpertError


def pick_device(name: str | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else CPU; anything else is checked."""
    if name in (None, "auto"):
        from defpert.runtime.distributed import local_device

        return local_device()  # under torchrun: this rank's GPU
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DefpertError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DefpertError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


# Images per chunk of the projected-gradient loop on a GPU, which wants large chunks to
# fill its cores: on an H100 one PGD step ran 276,509 image-steps/s at chunks of 512 and
# whole batches of 2,048 ran 13 % faster than chunks of 1,024 (benchmarks/README.md).
# On a CPU the size is measured per machine (defpert.runtime.calibrate).
GPU_CHUNK = 2048


# "auto": bf16 where native and checked equal to fp32 on the study's data (rq1), else fp32
PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(name: str) -> str:
    """Refuse an unknown precision name."""
    if name not in PRECISIONS:
        raise DefpertError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
    return name


# The CPU flags that decide which speed levers pay (Linux /proc/cpuinfo names).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@functools.cache
def cpu_info() -> dict[str, Any]:
    """The CPU's model name, logical cores and the flags in :data:`CPU_FLAGS`.

    Read from ``/proc/cpuinfo`` where there is one; elsewhere the flags come from torch's
    detected capability (AVX-512 without knowing whether it includes bfloat16).
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        capability = torch.backends.cpu.get_cpu_capability()
        flags = (
            {"avx2"}
            if capability == "AVX2"
            else {"avx2", "avx512f"}
            if "AVX512" in capability
            else set()
        )
    return {"model": model, "cores": os.cpu_count(), **{f: f in flags for f in CPU_FLAGS}}


def native_bf16(device: torch.device) -> bool:
    """Does ``device`` compute in bfloat16 natively (a GPU, or a CPU with AVX512_BF16 or AMX)?

    Without it (an AVX2 CPU, or AVX-512 without its bfloat16 extension) oneDNN emulates
    bfloat16 and is slower than fp32 (18x measured on an AVX2 CPU).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    info = cpu_info()
    return bool(info["avx512_bf16"] or info["amx_bf16"])


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast for ``precision="bf16"``, nothing for ``"fp32"``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    if precision == "auto":
        raise DefpertError("precision 'auto' is resolved by the study, not by one computation")
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters need no gradient while only the input's gradient is wanted.

    Autograd then skips every weight-gradient computation (and ART's ``loss.backward()``
    leaves ``.grad`` alone); each parameter's flag is restored on exit.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
