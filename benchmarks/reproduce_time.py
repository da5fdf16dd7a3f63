"""Wall time of ``defpert reproduce`` (``--quick`` by default, ``--full`` for the full study).

    python benchmarks/reproduce_time.py [--full] [--dataset mnist] [--out DIR]

Runs the command in a fresh run directory (the dataset must be fetched; the model is
trained as part of the run) and reports the wall time and each stage's seconds (training,
each threat model's RQ1, the sweeps), read from the run directory, with the machine it ran on.

    python benchmarks/reproduce_time.py --estimate [--full]

runs nothing: it counts the forward-backward passes per image ("image-steps") that the
study's weak attacks and defensive perturbations need, from the study's own settings, and
what they cost at the engine's rate measured here and at the machine's fp32 arithmetic
limit: a floor under the study's time before any strong or adaptive attack.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import emit, flops_per_image_step, machine, peak_gflops

from defpert.data import get_spec, load_split
from defpert.defenses import ROBUSTIFY
from defpert.models import build_model
from defpert.runtime import calibrate
from defpert.study.config import DPConfig
from defpert.study.reproduce import ReproduceConfig


def stage_seconds(run: Path) -> dict[str, float]:
    """Seconds each saved stage took (training from the model's metrics)."""
    out: dict[str, float] = {}
    metrics = run / "model" / "metrics.json"
    if metrics.is_file():
        out["train"] = json.loads(metrics.read_text()).get("train_seconds", 0.0)
    for stage in sorted((run / "stages").glob("*.json")):
        out[stage.stem] = json.loads(stage.read_text()).get("seconds", 0.0)
    return out


def image_steps(config: ReproduceConfig, test_size: int) -> dict[str, int]:
    """Forward-backward passes per image that each stage's weak attacks and defenses need
    (the strong suite and the adaptive attack not counted: their length depends on how many
    examples each attack leaves unbroken)."""
    n = min(config.limit or test_size, test_size)
    n_strong = min(config.dp.strong_limit, n)
    out: dict[str, int] = {}
    for threat in config.threats:
        dp = config.dp_config(threat)
        total = n * dp.steps  # the weak attack on the original data
        for method in dp.defenses:
            defense = dp.defense(method)
            defend = defense.steps * defense.passes_per_step
            total += n * defend  # the defense on the clean images
            # proactive: the weak attack on the defended points; reactive: the defense on the
            # weak attack's points; robustify: the undo attack (the defense reversed, then
            # the strong suite's length of PGD) on the strong suite's examples as well
            total += n * (defend if defense.reactive else dp.steps)
            if method in ROBUSTIFY:
                total += n_strong * (defend + dp.strong_steps)
        out[f"rq1 {threat['norm']}"] = total
    first = config.threats[0]
    sweep_n = min(config.sweep_limit, n)
    steps = DPConfig(**first).steps
    out["sweep"] = len(config.sweep_eps) * sweep_n * 3 * steps  # weak, ce, weak on ce
    return out


def estimate(full: bool, dataset: str) -> dict[str, Any]:
    """The floor under the study's time: its image-steps at the measured engine rate and at
    the fp32 limit."""
    config = ReproduceConfig.for_dataset(dataset, quick=not full)
    spec = get_spec(dataset)
    model = build_model(config.model, spec.input_shape, spec.num_classes, mean=0.5, std=0.5).eval()
    counts = image_steps(config, load_split(dataset, "test", progress=False).images.shape[0])
    flops = flops_per_image_step(model, spec.input_shape)
    peak = peak_gflops()
    rates = calibrate.measure(model, spec.input_shape, torch.device("cpu"), seconds=2.0)
    rate = max(rates.values())
    total = sum(counts.values())
    return {"benchmark": "reproduce_time", "estimate": True, "full": full, "dataset": dataset,
            "image_steps": counts, "image_steps_total": total,
            "engine_image_steps_per_s": rate, "chunk_rates": rates,
            "mflops_per_image_step": flops / 1e6, "peak_fp32_gflops": peak,
            "floor_seconds_at_engine_rate": total / rate,
            "floor_seconds_at_fp32_limit": total * flops / (peak * 1e9), "machine": machine()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full study (10,000 images)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--estimate", action="store_true",
                        help="count the study's image-steps and their cost; run nothing")  # fmt: skip
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    if args.estimate:
        emit(estimate(args.full, args.dataset), args.json)
        return
    run = Path(args.out or tempfile.mkdtemp(prefix="defpert-reproduce-")) / "run"
    command = [sys.executable, "-m", "defpert", "reproduce", "--dataset", args.dataset,
               "--out", str(run), "--no-progress"] + ([] if args.full else ["--quick"])  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"reproduce failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    stages = stage_seconds(run)
    emit(
        {"benchmark": "reproduce_time", "full": args.full, "dataset": args.dataset,
         "wall_seconds": wall, "stage_seconds": stages, "run": str(run), "machine": machine()},
        args.json,
    )  # fmt: skip


if __name__ == "__main__":
    main()
