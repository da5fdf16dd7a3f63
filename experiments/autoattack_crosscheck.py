"""defpert's strong suite against torchattacks' AutoAttack (standard version), same points.

For each model (a standard ``cnn``, an adversarially trained ``cnn``, and the standard
``cnn`` behind an input quantiser whose gradient is zero, where only a black-box attack
works): robust accuracy under defpert's ``standard`` tier and under AutoAttack on the same
first ``n`` test images, the examples on which the two disagree, and each one's wall time.
Goal: defpert never more optimistic than AutoAttack by more than 0.5 points, in no more time.

The peer is AutoAttack's standard version assembled from torchattacks' APGD, APGD-T, FAB-T
and Square with the paper's 100 iterations; torchattacks' own ``AutoAttack`` class runs its
parts at 10 iterations, which is also measured (``--peers 100,10``).

    pip install --no-deps torchattacks==3.5.1     # the peer (not a dependency of defpert)
    python experiments/autoattack_crosscheck.py --standard runs/cnn --robust runs/cnn-fgsm \\
        --n 500 --out experiments/results/autoattack-crosscheck.json

``--part defpert`` and ``--part autoattack`` run one side each (side by side, one thread
each, under the same load), ``--merge A.json B.json`` joins them.
``--search fp32,bf16`` also runs defpert's suite searching in bf16 (fp32 verdicts). Each
side's cost is counted in passes of the model per example (``passes``).
``--models`` picks a subset (standard, robust, masked); ``--eps`` sets each model's radius
(default: 0.1 for the standard and masked models, 0.3 for the robust one, L-inf).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from _benchmarks import emit

from defpert.attacks import StrongConfig, strong_attack
from defpert.attacks._common import project
from defpert.core.evaluate import correct
from defpert.core.passes import counting
from defpert.core.threat import make_threat
from defpert.data import load_split
from defpert.models import load_checkpoint
from defpert.runtime.devices import pick_device
from defpert.testing import GradientMasked


def cpu_description() -> dict[str, Any]:
    """The CPU model and the flags that matter for speed, and how busy the machine was."""
    info: dict[str, Any] = {"model": "", "flags": []}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not info["model"]:
                    info["model"] = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                    info["flags"] = [f for f in wanted if f in flags]
                    break
    except OSError:
        pass
    info["load_average_1min"] = os.getloadavg()[0]
    info["cores"] = os.cpu_count()
    info["torch_threads"] = torch.get_num_threads()
    return info


def autoattack(model: torch.nn.Module, norm: str, eps: float, iterations: int) -> Any:
    """AutoAttack's standard version from torchattacks' parts, APGD/APGD-T/FAB-T at
    ``iterations`` (the paper's: 100). torchattacks' own ``AutoAttack(version="standard")``
    leaves its parts at their default of 10 iterations: ``iterations=10`` is that one."""
    from torchattacks import APGD, APGDT, FAB, MultiAttack, Square

    n = "Linf" if norm == "linf" else "L2"
    return MultiAttack([
        APGD(model, eps=eps, norm=n, steps=iterations, n_restarts=1, loss="ce", seed=0),
        APGDT(model, eps=eps, norm=n, steps=iterations, n_restarts=1, n_classes=10, seed=0),
        FAB(model, eps=eps, norm=n, steps=iterations, multi_targeted=True, n_classes=10,
            n_restarts=1, seed=0),
        Square(model, eps=eps, norm=n, n_queries=5000, n_restarts=1, seed=0),
    ])  # fmt: skip


def run_defpert(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                eps: float, search: str = "fp32") -> dict[str, Any]:  # fmt: skip
    """defpert's ``standard`` tier: accuracy, time, passes and which examples stood."""
    threat = make_threat(norm, eps)
    started = time.perf_counter()
    with counting(model) as passes:
        ours = strong_attack(model, x, y, threat=threat, seed=0,
                             config=StrongConfig("standard", search=search))  # fmt: skip
    seconds = time.perf_counter() - started
    return {"accuracy": ours.accuracy, "seconds": round(seconds, 1), "search": ours.search,
            "passes": passes.per_example(len(y)),
            "broken_by": ours.broken_by, "attack_seconds": ours.seconds,
            "robust": ours.robust.nonzero().flatten().tolist()}  # fmt: skip


def run_autoattack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
                   eps: float, iterations: int) -> dict[str, Any]:  # fmt: skip
    """The peer at ``iterations``: accuracy, time and which examples stood (points inside
    the ball only, on clean-correct examples)."""
    threat = make_threat(norm, eps)
    clean = correct(model, x, y)
    started = time.perf_counter()
    with counting(model) as passes:
        points = autoattack(model, norm, eps, iterations)(x, y).detach().cpu()
    seconds = time.perf_counter() - started
    theirs = correct(model, project(threat, x, points), y) & clean
    return {"accuracy": float(theirs.float().mean()), "seconds": round(seconds, 1),
            "passes": passes.per_example(len(y)),
            "robust": theirs.nonzero().flatten().tolist()}  # fmt: skip


def combine(row: dict[str, Any]) -> dict[str, Any]:
    """Each peer's difference from defpert on the same examples, once both parts are in."""
    if "defpert" not in row:
        return row
    ours = row["defpert"]
    for key in [k for k in row if k.startswith("autoattack_")]:
        peer = row[key]
        mine, their = set(ours["robust"]), set(peer["robust"])
        peer.update({
            "defpert_minus_autoattack_points": round(100 * (ours["accuracy"] - peer["accuracy"]), 2),
            "robust_only_for_defpert": len(mine - their),
            "robust_only_for_autoattack": len(their - mine),
            "time_ratio_defpert_over_autoattack": round(ours["seconds"] / peer["seconds"], 3),
        })  # fmt: skip
    return row


def compare(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str,
            eps: float, peers: list[int], parts: set[str],
            searches: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:  # fmt: skip
    """One model's row: the parts asked for (``defpert``, ``autoattack``) on the same points."""
    row: dict[str, Any] = {"model": name, "norm": norm, "eps": eps, "n": len(y),
                           "clean": float(correct(model, x, y).float().mean())}  # fmt: skip
    for search in searches if "defpert" in parts else ():
        key = "defpert" if search == "fp32" else f"defpert_{search}"
        row[key] = run_defpert(model, x, y, norm, eps, search)
        print(f"{name}: clean {row['clean']:.4f}  {key} {row[key]['accuracy']:.4f} "
              f"({row[key]['seconds']:.0f} s)", flush=True)  # fmt: skip
    if "autoattack" in parts:
        for iterations in peers:
            peer = run_autoattack(model, x, y, norm, eps, iterations)
            row[f"autoattack_{iterations}"] = peer
            print(f"{name}: AutoAttack ({iterations} iterations): {peer['accuracy']:.4f} "
                  f"({peer['seconds']:.0f} s)", flush=True)  # fmt: skip
    return combine(row)


def merge(files: list[str]) -> list[dict[str, Any]]:
    """Rows of separate runs (``--part defpert`` and ``--part autoattack``, e.g. side by
    side, one thread each), joined per model on the same examples."""
    rows: dict[tuple[str, str, float, int], dict[str, Any]] = {}
    for file in files:
        with open(file) as fh:
            for r in json.load(fh)["rows"]:
                key = (r["model"], r["norm"], r["eps"], r["n"])
                rows.setdefault(key, {}).update(r)
    return [combine(r) for r in rows.values()]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README's table: one line per model and peer."""
    lines = ["| model | threat | n | clean | defpert `standard` | AutoAttack (iterations) | defpert - AutoAttack | only defpert robust / only AutoAttack robust | seconds: defpert / AutoAttack |",
             "|---|---|---:|---:|---:|---|---:|---|---|"]  # fmt: skip
    for r in rows:
        if "defpert" not in r:
            continue
        for key in sorted(k for k in r if k.startswith("autoattack_")):
            peer = r[key]
            lines.append(
                f"| {r['model']} | {r['norm']} {r['eps']} | {r['n']} | {r['clean']:.1%} | "
                f"{r['defpert']['accuracy']:.1%} | {peer['accuracy']:.1%} ({key.split('_')[1]}) | "
                f"{peer['defpert_minus_autoattack_points']:+.1f} pp | "
                f"{peer['robust_only_for_defpert']} / {peer['robust_only_for_autoattack']} | "
                f"{r['defpert']['seconds']:.0f} / {peer['seconds']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--standard", help="checkpoint directory of a standard cnn")
    p.add_argument("--robust", help="checkpoint directory of an adversarially trained cnn")
    p.add_argument("--models", default="standard,robust,masked")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--norm", default="linf")
    p.add_argument("--eps", default="standard=0.1,robust=0.3,masked=0.1")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--peers", default="100,10",
                   help="AutoAttack's APGD/FAB iterations to run: 100 (the paper's), 10 (torchattacks' default)")  # fmt: skip
    p.add_argument("--part", default="defpert,autoattack",
                   help="defpert, autoattack or both: run the two as separate processes side by side, then --merge")  # fmt: skip
    p.add_argument("--merge", nargs="+", metavar="JSON", help="join the rows of separate parts")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--search",
        default="fp32",
        help="defpert's search precisions, e.g. fp32,bf16 (a bf16 row: defpert_bf16)",
    )
    p.add_argument("--out")
    args = p.parse_args()
    if args.merge:
        rows = merge(args.merge)
        parts = []
        for file in args.merge:
            with open(file) as fh:
                part = json.load(fh)
            parts.append({"file": os.path.basename(file), "cpu": part.get("cpu"),
                          "gpu": part.get("gpu")})  # fmt: skip
        emit({"benchmark": "autoattack_crosscheck", "merged_from": parts, "rows": rows},
             args.out)  # fmt: skip
        print(markdown(rows))
        return
    parts = set(args.part.split(","))
    device = pick_device(args.device)
    eps = {k: float(v) for k, v in (item.split("=") for item in args.eps.split(","))}
    test = load_split(args.dataset, "test").head(args.n)
    x, y = test.images, test.labels  # on the CPU: each attack moves its chunks to the model
    rows = []
    for name in args.models.split(","):
        checkpoint = args.robust if name == "robust" else args.standard
        if checkpoint is None:
            raise SystemExit(
                f"--models {name} needs --{'robust' if name == 'robust' else 'standard'}"
            )
        model, _ = load_checkpoint(checkpoint, map_location=device)
        model = model.to(device).eval()
        if name == "masked":
            model = GradientMasked(model, levels=16).eval()
        peers = [int(v) for v in args.peers.split(",") if v]
        rows.append(compare(name, model, x, y, args.norm, eps[name], peers, parts,
                            tuple(args.search.split(","))))  # fmt: skip
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    emit({"benchmark": "autoattack_crosscheck", "cpu": cpu_description(), "gpu": gpu,
          "rows": rows}, args.out)  # fmt: skip
    print(markdown(rows))


if __name__ == "__main__":
    main()
