"""The numbers of a ``defpert dp`` run directory, finished or still running, as one JSON.

Every saved data version is judged again by the run's model (so the weak-attack and clean
accuracies are there as soon as a version is saved), and every finished strong-suite and
adaptive record is read from the run's store; each accuracy comes with its n and its 95 %
Wilson interval. For studies that outlast a session: the pieces finished so far are kept.

    python experiments/summarize_dp_run.py runs/study --out experiments/results/study.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from defpert.core.evaluate import accuracy
from defpert.models import load_checkpoint
from defpert.study.store import load_npz
from defpert.wording import wilson


def rated(value: float, n: int) -> dict[str, Any]:
    low, high = wilson(round(value * n), n)
    return {"accuracy": value, "n": n, "interval95": [low, high]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--out")
    a = p.parse_args()
    run = Path(a.run)
    config = json.loads((run / "config.json").read_text())
    model, card = load_checkpoint(config["checkpoint"])
    versions: dict[str, Any] = {}
    base = run / "versions" / "test"
    for path in sorted(base.rglob("*.npz")):
        x, y = (torch.from_numpy(a) for a in load_npz(path))
        versions[str(path.relative_to(base).with_suffix(""))] = rated(accuracy(model, x, y), len(y))
    records: dict[str, Any] = {}
    for path in sorted((run / "partial" / "test").glob("*.json")):
        if path.stem.startswith(("strong-", "adaptive-")):
            r = json.loads(path.read_text())
            n = r.get("n") or config["dp"]["strong_limit"]
            records[path.stem] = {**rated(r["accuracy"], n), "broken_by": r.get("broken_by"),
                                  "seconds": r.get("seconds")}  # fmt: skip
    result = {"run": str(run), "checkpoint": config["checkpoint"], "dp": config["dp"],
              "model": {"training": card.get("training"), "accuracy": card.get("accuracy")},
              "versions": versions, "strong_and_adaptive": records,
              "finished": (run / "metrics.json").is_file()}  # fmt: skip
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
