"""Every number a fixed set of commands produces, as a digest to compare bit for bit.

A redesign must not change a single number. This runs a fixed set of ``defpert`` commands
(training, ``dp`` at both of the original's threat models with every defense, the strong
suite's tiers, the adaptive attack, a sweep, ``reproduce --quick`` on the digits, a shipped
checkpoint) with whatever ``defpert`` the Python path gives (``PYTHONPATH=<tree>/src`` runs
another commit's code), and writes one digest: for every file a command wrote, the
SHA-256 of each saved array and weight tensor, and every number of its JSON except wall
times, paths and code hashes. Two digests are equal exactly when every accuracy, every
count and every saved point is.

    python tools/reference_outputs.py --subset fast --out /tmp/new.json
    git archive REF src | tar -x -C /tmp/ref
    PYTHONPATH=/tmp/ref/src python tools/reference_outputs.py --subset fast --out /tmp/ref.json
    python tools/reference_outputs.py --compare /tmp/ref.json /tmp/new.json

``tests/test_unchanged.py`` does exactly that for the fast subset against the commit named
in ``tests/reference_commit.txt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Keys whose values follow the machine, the clock or the checkout, not the computation.
VOLATILE = ("second", "time", "elapsed", "environment", "created", "date", "sha256",
            "fingerprint", "source", "version", "path", "dir", "host", "threads", "load",
            "per_s", "checkpoint", "out", "command", "machine", "lent", "note")  # fmt: skip

DIGITS = ["--dataset", "digits", "--batch-size", "32", "--seed", "0"]
SMALL = ["--limit", "40", "--strong-limit", "16", "--strong-steps", "5",
         "--square-queries", "20", "--adaptive-limit", "8", "--adaptive-square-queries", "10"]  # fmt: skip
ALL = "ce,margin,robustify,robustify-label-free,anti-adversary,hedge"


def commands(subset: str) -> dict[str, list[str]]:
    """name -> defpert arguments (``{ck}`` is the digits checkpoint, ``{out}`` a fresh dir)."""
    fast = {
        "train": ["train", "--dataset", "digits", "--epochs", "3", "--out", "{ck}"],
        "dp-linf": ["dp", *DIGITS, "--checkpoint", "{ck}", "-p", "linf", "-k", "5", "-e", "0.2",
                    "-a", "0.05", "--defense", ALL, "--strong", "quick", *SMALL, "--out", "{out}"],
        "dp-l2": ["dp", *DIGITS, "--checkpoint", "{ck}", "-p", "l2", "-k", "5", "-e", "1.5",
                  "-a", "0.4", "--defense", "ce,robustify,hedge", "--strong", "quick", *SMALL,
                  "--out", "{out}"],
    }  # fmt: skip
    if subset == "fast":
        return fast
    return {
        **fast,
        "dp-standard-original": ["dp", *DIGITS, "--checkpoint", "{ck}", "-p", "linf", "-k", "5",
                                 "-e", "0.2", "-a", "0.05", "--defense", "ce,anti-adversary",
                                 "--strong", "standard", "--budget-from", "original", *SMALL,
                                 "--out", "{out}"],
        "dp-plus": ["dp", *DIGITS, "--checkpoint", "{ck}", "-p", "l2", "-k", "5", "-e", "1.5",
                    "-a", "0.4", "--defense", "margin", "--strong", "plus", *SMALL,
                    "--out", "{out}"],
        "train-pgd": ["train", "--dataset", "digits", "--epochs", "2", "--adversarial", "pgd",
                      "--adv-steps", "3", "--adv-eps", "0.2", "--adv-step-size", "0.1",
                      "--out", "{out}"],
        "sweep": ["sweep", "--dataset", "digits", "--checkpoint", "{ck}", "--eps", "0.1,0.2",
                  "-k", "5", "--limit", "30", "--strong-limit", "10", "--strong", "quick",
                  "--seed", "0", "--out", "{out}"],
        "reproduce-quick": ["reproduce", "--quick", "--dataset", "digits", "--out", "{out}"],
        "dp-shipped": ["dp", "--checkpoint", "shipped:mnist-cnn-pgd", "--dataset", "mnist",
                       "--batch-size", "32", "-p", "linf", "-k", "5", "-e", "0.2", "-a", "0.05",
                       "--defense", "robustify,hedge", "--strong", "quick", *SMALL,
                       "--out", "{out}"],
    }  # fmt: skip


# Sweep rows and the report's CSV columns were renamed (defpert.results): rows and columns
# of either naming are digested under the new names, so that only a changed number differs.
CSV_COLUMNS = {"original_attacked_strong": "bare_strong", "defensive_attacked_strong": "defended_strong",
               "bare_strong_adaptive_examples": "bare_strong_on_adaptive_examples",
               "original_attacked": "bare_weak", "defensive_attacked": "defended_weak",
               "defended_adversarial": "weak_points_through_defense", "original": "bare_clean",
               "defensive": "defended_clean", "defensive_undo_attacked": "undo_then_attack"}  # fmt: skip


def _measured(value: Any, n: Any) -> Any:
    return {"accuracy": value, "n": n} if isinstance(value, int | float) else None


def _renamed_row(row: dict[str, Any]) -> dict[str, Any]:
    """A sweep or budget row of the names before defpert.results, in the names after."""
    n, m = row.get("n"), row.get("strong_n")
    if "eps_def" in row and "weak_strong_n" in row:  # a budget row
        side = {"clean": _measured(row.get("clean"), n), "weak": _measured(row.get("weak"), n),
                "weak_on_strong_examples": _measured(row.get("weak_strong_n"), m),
                "strong": _measured(row.get("strong"), m)}  # fmt: skip
        return {"defense": row["defense"], "eps_def": row["eps_def"], "eps": row["eps"],
                **{k: v for k, v in side.items() if v is not None}}  # fmt: skip
    sides = {}
    for new, old in (("bare", "original"), ("defended", "defensive")):
        side = {"clean": _measured(row.get(old), n),
                "weak": _measured(row.get(f"{old}_attacked"), n),
                "weak_on_strong_examples": _measured(row.get(f"{old}_attacked_strong_n"), m),
                "strong": _measured(row.get(f"{old}_attacked_strong"), m)}  # fmt: skip
        sides[new] = {k: v for k, v in side.items() if v is not None}
    return {"eps": row["eps"], "step_size": row["step_size"], "defense": row["defense"], **sides}


def _is_old_row(value: dict[str, Any]) -> bool:
    return ("eps_def" in value and "weak_strong_n" in value) or (
        "eps" in value and "original_attacked" in value and "bare" not in value
        and "accuracy" not in value)  # fmt: skip


def _numbers(value: Any, key: str = "") -> Any:
    """``value`` with the volatile keys left out, recursively."""
    if isinstance(value, dict) and _is_old_row(value):
        value = _renamed_row(value)
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in sorted(value.items())
                if not any(word in k.lower() for word in VOLATILE)}  # fmt: skip
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    return value


def digest_dir(root: Path) -> dict[str, Any]:
    """Every file's numbers under ``root``: arrays and tensors by SHA-256, JSON by value."""
    import numpy as np

    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if not path.is_file() or path.name.startswith(".") or ".journal" in path.name:
            continue  # locks and journals are a run's working state
        if path.name in ("fingerprint.json", "manifest.json"):
            continue  # what a run computed from, and the digests of files whose numbers follow
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                out[rel] = {k: hashlib.sha256(np.ascontiguousarray(data[k]).tobytes()).hexdigest()
                            for k in sorted(data.files)}  # fmt: skip
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            out[rel] = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                        for k, v in sorted(tensors.items())}  # fmt: skip
        elif path.suffix == ".json" and path.name != "config.json":
            out[rel] = _numbers(json.loads(path.read_text()))
        elif path.suffix == ".csv":
            import csv

            with open(path, newline="") as fh:
                out[rel] = [{CSV_COLUMNS.get(k, k): v for k, v in sorted(row.items())}
                            for row in csv.DictReader(fh)]  # fmt: skip
    return out


def run(subset: str, work: Path, data_dir: str | None = None) -> dict[str, Any]:
    """Run the subset's commands in ``work``; return their digest."""
    env = {**os.environ, "DEFPERT_THREADS": "1", "HOME": str(work / "home")}
    env.pop("DEFPERT_CACHE", None)
    ck = work / "checkpoint"
    digest: dict[str, Any] = {}
    for name, args in commands(subset).items():
        out = work / name
        argv = [a.replace("{ck}", str(ck)).replace("{out}", str(out)) for a in args]
        if data_dir and "mnist" in argv:
            argv += ["--data-dir", data_dir]
        done = subprocess.run([sys.executable, "-m", "defpert", *argv, "--no-progress"],
                              env=env, capture_output=True, text=True, cwd=work)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{name}: exit {done.returncode}: {done.stderr.strip()[-2000:]}")
        digest[name] = digest_dir(ck if name == "train" else out)
    return digest


def differences(a: Any, b: Any, where: str = "", *, additions: bool = False) -> list[str]:
    """Where two digests differ (empty: identical). With ``additions``, a JSON key only in
    ``b`` (a field a later commit records, such as the search precision) is not a difference:
    every number ``a`` has must still be in ``b``, unchanged; a file only in ``b`` still is,
    except the cost a later commit keeps beside a data version (``*.passes.json``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        extra = set(b) - set(a) if additions and where.count("/") >= 2 else set()
        if additions:
            extra |= {k for k in set(b) - set(a) if k.endswith(".passes.json")}
        found = [f"{where}/{k}: only in one" for k in sorted((set(a) ^ set(b)) - extra)]
        for k in sorted(set(a) & set(b)):
            found += differences(a[k], b[k], f"{where}/{k}", additions=additions)
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (u, v) in enumerate(zip(a, b, strict=True))
            for d in differences(u, v, f"{where}[{i}]", additions=additions)
        ]
    if a == b or (a != a and b != b) or (_is_time(a) and _is_time(b)):
        return []
    return [f"{where}: {a!r} != {b!r}"]


def _is_time(value: Any) -> bool:
    """A timestamp (a card's date, kept inside a stage's key): when, not what."""
    return (
        isinstance(value, str)
        and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", value) is not None
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subset", choices=("fast", "full"), default="full")
    p.add_argument("--out", help="where to write the digest (JSON)")
    p.add_argument("--data-dir", help="where MNIST's files are (for the shipped checkpoint)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two digests")
    a = p.parse_args()
    if a.compare:
        found = differences(*(json.loads(Path(f).read_text()) for f in a.compare), additions=True)
        print("\n".join(found) if found else "identical: every number and every array")
        return 1 if found else 0
    with tempfile.TemporaryDirectory() as tmp:
        digest = run(a.subset, Path(tmp), a.data_dir)
    text = json.dumps(digest, indent=1, sort_keys=True)
    if a.out:
        Path(a.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
