"""Ship a checkpoint that ``defpert train`` wrote: copy it into the package, measure it,
record its SHA-256 and provenance in ``src/defpert/models/checkpoints/index.json``.

    python tools/ship_checkpoint.py runs/mnist-cnn-pgd10 mnist-cnn-pgd \
        --command "defpert train --dataset mnist --adversarial pgd ..." --commit 6d192ad

Measured and recorded: the test accuracy (from the card), the clean accuracy and PGD-40
accuracy (the training threat, step eps/10, from the natural image) on the first
``--slice`` test images (what ``defpert models`` shows), and the same on the first
``CHECK_N`` (what ``tests/test_shipped.py`` re-measures on every run, small to keep the
suite fast). ``--strong METRICS.json`` adds a strong-suite figure from a ``dp`` run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from defpert.attacks import pgd
from defpert.core.evaluate import correct
from defpert.core.threat import make_threat
from defpert.data import load_split
from defpert.models import load_checkpoint, read_card
from defpert.models.shipped import INDEX, SHIPPED_DIR
from defpert.runtime.rundir import file_sha256, read_json, write_json

CHECK_N = 200  # test images the test suite re-measures for each shipped checkpoint


def measure_slices(run: Path, sizes: tuple[int, ...]) -> list[dict[str, float | int | str]]:
    """Clean and PGD-40 accuracy on the first ``n`` test images, for each ``n`` of ``sizes``.

    The images are attacked once, for the largest ``n``: PGD-40 from the natural image
    (no random start) gives each image the same point whatever else is in its batch.
    """
    model, card = load_checkpoint(run)
    test = load_split(card["dataset"], "test").head(max(sizes))
    threat_info = card["threat_trained_against"]
    threat = make_threat(threat_info["norm"], threat_info["eps"])
    x_adv = pgd(model, test.images, test.labels, threat=threat, steps=40,
                step_size=threat.eps / 10)  # fmt: skip
    clean = correct(model, test.images, test.labels).float()
    attacked = correct(model, x_adv, test.labels).float()
    return [{"n": min(n, len(test)), "clean": float(clean[:n].mean()),
             "pgd40": float(attacked[:n].mean()), "norm": threat.norm, "eps": threat.eps}
            for n in sizes]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the run directory defpert train wrote")
    p.add_argument("name", help="the shipped name, e.g. mnist-cnn-pgd")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument("--commit", required=True, help="the defpert commit it was trained with")
    p.add_argument("--slice", type=int, default=1000, help="test images measured here")
    p.add_argument("--strong", type=Path, help="metrics.json of a dp run on this checkpoint")
    args = p.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    card = read_card(args.run)
    target = SHIPPED_DIR / args.name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("model.safetensors", "metrics.json"):
        shutil.copyfile(args.run / file, target / file)
    card["provenance"] = {"command": args.command, "commit": args.commit}
    write_json(target / "model.json", card)
    metrics = read_json(args.run / "metrics.json")
    record = {
        "sha256": file_sha256(target / "model.safetensors"),
        "dataset": card["dataset"],
        "training": card["training"]["kind"],
        "command": args.command,
        "commit": args.commit,
        "seed": card["seed"],
        "train_seconds": metrics["train_seconds"],
        "train_device": metrics["device"],
        "accuracy": {"test": card["accuracy"]["test"], "n_test": metrics["n_test"]},
    }
    record["slice"], record["check"] = measure_slices(target, (args.slice, CHECK_N))
    if args.strong is not None:
        result = read_json(args.strong)["results"][0]
        t = result["threat"]
        record["accuracy"]["robust"] = {
            "accuracy": result["accuracy"]["original_attacked_strong"],
            "n": result["strong"]["n"],
            "attack": f"{result['strong']['suite']['tier']} suite, {t['norm']} {t['eps']:g}",
        }
    index_path = SHIPPED_DIR / INDEX
    records = read_json(index_path) if index_path.is_file() else {}
    records[args.name] = record
    write_json(index_path, dict(sorted(records.items())))
    json.dump(record, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
