"""Where a study's finished pieces live, and what they were computed from.

A stored result is reused only when its fingerprint matches: the settings, the data, the
model's weights *and the code* (the package version and a hash of defpert's own source
files). Results of other code are recomputed, never reused, so a changed attack cannot
silently leave old numbers in a new report.

A stored result is also reused only as it was written: the run's manifest records each
piece's size and SHA-256 when it is saved, and a piece that no longer matches (truncated,
edited, replaced, or written by anything but this run) is said in one line and recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defpert import __version__
from defpert.attacks.journal import Bookmark, CascadeState
from defpert.core.passes import continue_count, counted_so_far
from defpert.errors import DefpertError
from defpert.runtime import distributed
from defpert.runtime.rundir import (
    file_sha256,
    json_bytes,
    read_json,
    write_atomic,
    write_json,
    write_json_here,
)
from defpert.study.layout import RunLayout

# The whole package (this file is defpert/study/store.py): a result is reused only by the
# code that computed it, the attacks', the defenses' and the engine's included.
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def source_files() -> list[Path]:
    """Every ``.py`` file of the package, in a fixed order: what :func:`code_version` hashes."""
    return sorted(PACKAGE_DIR.rglob("*.py"))


@functools.lru_cache(maxsize=1)  # read once per process: every stored piece asks for it
def code_version() -> dict[str, str]:
    """``{"version", "source_sha256"}``: the package version and a hash of its ``.py`` files."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return {"version": __version__, "source_sha256": digest.hexdigest()}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names and values): which weights a result came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_version(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Save one data version as ``.npz`` with ``images`` (N, C, H, W) float32 and ``labels``."""
    write_atomic(path, _npz_writer(images, labels))


def _npz_writer(images: torch.Tensor, labels: torch.Tensor) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images.numpy().astype(np.float32), labels=labels.numpy())

    return write


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``images``/``labels`` (or ``x``/``y``) from an ``.npz`` without unpickling."""
    p = Path(path)
    if not p.is_file():
        raise DefpertError(f"{p} does not exist")
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic and not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise DefpertError(f"{p} is not an .npz file (not a zip archive of arrays)")
    try:
        with np.load(p, allow_pickle=False) as f:
            keys = set(f.files)
            xk = next((k for k in ("images", "x", "inputs") if k in keys), None)
            yk = next((k for k in ("labels", "y") if k in keys), None)
            if xk is None or yk is None:
                raise DefpertError(
                    f"{p} needs arrays 'images' and 'labels' (found: {', '.join(sorted(keys))})"
                )
            x, y = f[xk], f[yk]
    except DefpertError:
        raise
    except ValueError as exc:
        raise DefpertError(
            f"{p} is not a plain .npz file (pickled objects are refused): {exc}"
        ) from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError...
        raise DefpertError(f"{p} is not a readable .npz file: {exc}") from None
    if y.ndim != 1 or len(y) != len(x):
        raise DefpertError(f"{p}: labels must be (N,) for N={len(x)} inputs, found shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DefpertError(f"{p}: labels must be integers, found {y.dtype}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise DefpertError(
            f"{p}: images must be finite numbers (found NaN, infinite or non-numeric values)"
        )
    return x, y


# The pieces that do not depend on any defense: the original data, attacked weakly and
# strongly. Other runs with the same shared fingerprint can lend them (Store.adopt).
SHARED_VERSIONS = ("original", "adversarial", "strong-adversarial")
SHARED_RECORDS = ("strong-original",)


class Store:
    """Finished pieces of a ``dp`` run, saved as each completes and reused by a rerun.

    Each data version (``versions/<split>/...npz``) and each strong or adaptive result
    (``partial/<split>/...json``) is one piece, written atomically. ``fingerprint``
    records what the shared pieces were computed from (the attacks' config, data, model
    weights; the code is added here); each defense's pieces have their own fingerprint on
    top (:meth:`for_defense`), so a change of one defense's settings recomputes that
    defense only. Pieces of another fingerprint are discarded, never mixed in. Without a
    run directory nothing is saved or reused.
    """

    def __init__(
        self,
        run: Path | None,
        split: str,
        labels: torch.Tensor,
        fingerprint: dict[str, Any],
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.labels = labels
        self.say = say or (lambda _m: None)
        self.run = run
        self.sealed: dict[str, Any] = {}  # the manifest: piece -> {"bytes", "sha256"}
        layout = RunLayout(run, split) if run is not None else None
        self.versions = layout.versions if layout is not None else None
        self.partial = layout.partial if layout is not None else None
        if run is None or self.partial is None or self.versions is None:
            return
        stamp = self.partial / "fingerprint.json"
        fingerprint = json.loads(json.dumps({**fingerprint, "code": code_version()}))
        self.fingerprint = fingerprint
        saved = readable_state(stamp, self.say)
        stale = saved != fingerprint
        if saved is not None and stale:
            self.say(f"{stamp}: the pieces beside it were computed from other settings, data, "
                     "weights or code; recomputing them")  # fmt: skip
        if distributed.main_decides(stale):
            if distributed.is_main():
                for old in (self.versions, self.partial):
                    shutil.rmtree(old, ignore_errors=True)
            distributed.barrier()
            write_json(stamp, fingerprint)
        if distributed.is_main():
            self.sealed = readable_state(self.partial / MANIFEST_FILE, self.say) or {}

    # -- the manifest: each piece as this run wrote it -----------------------------------

    def _write_sealed(self, path: Path, fill: Callable[[Path], object]) -> None:
        """Write ``path`` atomically, its size and SHA-256 entered in the run's manifest
        before the file takes its name: a run killed in between leaves a listed piece that
        is absent or differs (recomputed), never a finished piece the manifest lacks."""
        partial, run = self.partial, self.run
        assert partial is not None and run is not None

        def sealed(tmp: Path) -> None:
            fill(tmp)
            self.sealed[path.relative_to(run).as_posix()] = file_digest(tmp)
            write_json_here(partial / MANIFEST_FILE, self.sealed)

        write_atomic(path, sealed)

    def _tampered(self, path: Path) -> str | None:
        """Why ``path`` is not the piece this run wrote (None: it is, byte for byte)."""
        if self.run is None:
            return None
        entry = self.sealed.get(path.relative_to(self.run).as_posix())
        if not isinstance(entry, dict):
            return "the run's manifest does not list it"
        size, recorded = path.stat().st_size, entry.get("bytes")
        if recorded != size:
            return (f"it has {size:,} bytes, the manifest records {recorded:,}"
                    if isinstance(recorded, int) else "the manifest records no size for it")  # fmt: skip
        if entry.get("sha256") != file_sha256(path):
            return "its SHA-256 differs from the one the manifest records"
        return None

    def _trusted(self, path: Path) -> bool:
        """Whether ``path`` is as this run wrote it, decided by rank 0 for every rank (and
        said in one line when it is not, so that it is recomputed)."""
        why = self._tampered(path) if distributed.is_main() else None
        if why is not None:
            self.say(f"recomputing {path.name}: the saved file failed its check ({why})")
        return distributed.main_decides(why is None)

    def for_defense(self, method: str, fingerprint: dict[str, Any]) -> None:
        """Keep ``method``'s pieces only if they were computed with this ``fingerprint``
        (its budget and settings); otherwise remove them so they are recomputed."""
        if self.versions is None or self.partial is None:
            return
        stamp = self.partial / f"defense-{method}.json"
        fingerprint = json.loads(json.dumps(fingerprint))
        if distributed.main_decides(readable_state(stamp, self.say) == fingerprint):
            return
        if distributed.is_main():
            shutil.rmtree(self.versions / method, ignore_errors=True)
            shutil.rmtree(self.partial / method, ignore_errors=True)  # its rows journals
            for kind in ("strong", "adaptive"):
                (self.partial / f"{kind}-{method}.json").unlink(missing_ok=True)
                (self.partial / f"{kind}-{method}{JOURNAL_SUFFIX}").unlink(missing_ok=True)
        distributed.barrier()
        write_json(stamp, fingerprint)

    def adopt(self, other_run: Path) -> int:
        """Copy the shared pieces (the original data, attacked) from another run directory
        of the same shared fingerprint; returns how many were copied."""
        if self.versions is None or self.partial is None or not distributed.is_main():
            return 0
        lender = RunLayout(other_run, self.versions.name)
        other_versions, other_partial = lender.versions, lender.partial
        stamp = other_partial / "fingerprint.json"
        if not stamp.is_file() or read_json(stamp) != self.fingerprint:
            return 0
        sealed = readable_state(other_partial / MANIFEST_FILE, self.say) or {}
        copied = 0
        pairs = [(other_versions / f"{n}{ext}", self.versions / f"{n}{ext}")
                 for n in SHARED_VERSIONS for ext in (COST_SUFFIX, ".npz")]  # fmt: skip
        pairs += [(other_partial / f"{n}.json", self.partial / f"{n}.json") for n in SHARED_RECORDS]
        for source, target in pairs:
            entry = sealed.get(source.relative_to(other_run).as_posix())
            if not source.is_file() or target.is_file() or entry != file_digest(source):
                continue  # only what the lender's manifest vouches for
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_sealed(target, partial(shutil.copyfile, source))
            copied += not source.name.endswith(COST_SUFFIX)  # a cost goes with its version
        return copied

    def finished(self) -> int:
        """How many pieces an earlier run of the same fingerprint left here."""
        if self.versions is None or self.partial is None:
            return 0
        versions = list(self.versions.rglob("*.npz")) if self.versions.is_dir() else []
        results = [p for p in self.partial.glob("*.json")
                   if p.name not in ("fingerprint.json", MANIFEST_FILE)
                   and not p.name.startswith("defense-")]  # fmt: skip
        return len(versions) + len(results)

    def version(
        self, name: str, compute: Callable[[], torch.Tensor], rows: int | None = None
    ) -> torch.Tensor:
        """The saved data version ``name`` (checked: ``rows`` examples, by default all of the
        run's), or ``compute()`` saved under that name."""
        if self.versions is None:
            return compute()
        saved = self.saved(name, rows=len(self.labels) if rows is None else rows)
        if saved is not None:
            return saved
        images = compute()
        self.save(name, images)
        return images

    def saved(self, name: str, rows: int | None = None) -> torch.Tensor | None:
        """A saved data version, or None when there is none or it fails its check (then it
        is computed again, and the run says why): a readable ``.npz`` of finite pixels in
        [0, 1] whose labels are the run's first labels (``rows`` of them, where given)."""
        if self.versions is None:
            return None
        path = self.versions / f"{name}.npz"
        if not distributed.main_decides(path.is_file()) or not self._trusted(path):
            return None
        try:
            x, y = load_npz(path)
        except DefpertError as exc:
            return self._distrusted(path, str(exc))
        images, labels = torch.from_numpy(x), torch.from_numpy(y)
        n = len(labels)
        if rows is not None and n != rows:
            return self._distrusted(path, f"it holds {n} examples, the run {rows}")
        if len(images) != n or not torch.equal(labels, self.labels[:n]):
            return self._distrusted(path, "its labels are not the run's")
        if len(images) and (float(images.min()) < 0 or float(images.max()) > 1):  # finite: load_npz
            return self._distrusted(path, "its pixels are not in [0, 1]")
        return images

    def _distrusted(self, path: Path, why: str) -> torch.Tensor | None:
        """Say why a saved version is not reused; None, so that it is computed again."""
        self.say(f"recomputing {path.name}: the saved file failed its check ({why})")
        return None

    def save(self, name: str, images: torch.Tensor) -> None:
        """Save a data version of the first ``len(images)`` examples (and drop the rows
        journal its computation kept)."""
        if self.versions is not None:
            path = self.versions / f"{name}.npz"
            self._write_sealed(path, _npz_writer(images, self.labels[: len(images)]))
        journal = self.rows_journal(name)
        if journal is not None and distributed.is_main():
            journal.path.unlink(missing_ok=True)

    def discard(self, name: str) -> None:
        """Forget the saved result ``name`` (so that it is computed again)."""
        if self.partial is not None and distributed.is_main():
            (self.partial / f"{name}.json").unlink(missing_ok=True)

    def cost(self, name: str) -> dict[str, Any] | None:
        """What computing data version ``name`` cost, in passes of the classifier per example
        (kept beside it, so that a run reusing the version reports it), or None."""
        if self.versions is None:
            return None
        path = self.versions / f"{name}{COST_SUFFIX}"
        cost = readable_state(path, self.say)
        why = self._tampered(path) if cost is not None and distributed.is_main() else None
        if cost is None or why is not None:
            if cost is not None:
                self.say(
                    f"{path} is not the cost this run recorded; the cost of {name} is left out"
                )
            return None
        counts = [cost.get(k) for k in ("n", "forward", "backward")]
        if not (isinstance(counts[0], int) and all(isinstance(c, int | float) and not isinstance(c, bool)
                                                   and c >= 0 for c in counts)):  # fmt: skip
            self.say(f"{path} is not a cost record; the cost of {name} is left out")
            return None
        return {"n": counts[0], "forward": counts[1], "backward": counts[2]}

    def save_cost(self, name: str, cost: dict[str, Any]) -> None:
        """Keep the cost of data version ``name`` (written before the version itself)."""
        if self.versions is not None:
            data = json_bytes(cost)
            self._write_sealed(
                self.versions / f"{name}{COST_SUFFIX}", lambda tmp: tmp.write_bytes(data)
            )

    def rows_journal(self, name: str) -> RowsJournal | None:
        """Where the long computation of data version ``name`` (a defense over the whole
        test set) keeps its finished rows until the version is saved; None without a run
        directory."""
        return RowsJournal(self.partial / f"{name}{ROWS_SUFFIX}") if self.partial else None

    def record(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The saved JSON result ``name``, or ``compute()`` saved under that name."""
        if self.partial is None:
            return compute()
        path = self.partial / f"{name}.json"
        saved = readable_state(path, self.say) if distributed.is_main() else None
        if distributed.main_decides(isinstance(saved, dict)) and self._trusted(path):
            return dict(saved if isinstance(saved, dict) else read_json(path))
        result = compute()
        data = json_bytes(result)
        self._write_sealed(path, lambda tmp: tmp.write_bytes(data))
        if distributed.is_main():
            (self.partial / f"{name}{JOURNAL_SUFFIX}").unlink(missing_ok=True)
        return result

    def journal(self, name: str) -> FileJournal | None:
        """Where the long computation of result ``name`` keeps its progress until the result
        is recorded (then the journal is removed); None without a run directory."""
        return FileJournal(self.partial / f"{name}{JOURNAL_SUFFIX}") if self.partial else None


JOURNAL_SUFFIX = ".journal.npz"
COST_SUFFIX = ".passes.json"
MANIFEST_FILE = "manifest.json"


def file_digest(path: Path) -> dict[str, Any]:
    """What the manifest records of a piece: its size and SHA-256."""
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


ROWS_SUFFIX = ".rows.npz"


class RowsJournal:
    """The finished rows of a long perturbation in one ``.npz`` (arrays and JSON: nothing is
    unpickled), replaced atomically at most once a minute. A robustifying defense of the
    whole MNIST test set runs for most of an hour on a 2-core CPU; a rerun continues after
    the rows kept here. The inputs' digest is kept with them: a journal of other inputs, or
    an unreadable one, is ignored and the perturbation starts over."""

    interval = 60.0  # seconds between writes

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def _digest(x: torch.Tensor, labels: torch.Tensor) -> str:
        data = x.detach().cpu().numpy().tobytes() + labels.detach().cpu().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()

    def rows_done(self) -> int:
        """How many rows the journal holds (0 without one), for a progress line."""
        found = self._load()
        return int(found[0]["done"]) if found is not None else 0

    def _load(self) -> tuple[dict[str, Any], torch.Tensor] | None:
        if not distributed.main_decides(self.path.is_file()):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                rows = torch.from_numpy(saved["rows"])
        except Exception:  # a damaged file: start over
            return None
        if len(rows) != meta.get("done") or int(meta.get("batch_size", 0)) < 1:
            return None
        return meta, rows

    def read(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, torch.Tensor] | None:
        found = self._load()
        if found is None:
            return None
        meta, rows = found
        fits = (meta.get("inputs") == self._digest(x, labels) and rows.shape[1:] == x.shape[1:]
                and len(rows) <= len(x) and rows.dtype == x.dtype)  # fmt: skip
        if not fits:
            return None
        continue_count(meta.get("passes"))  # the rows kept are not computed again
        return int(meta["batch_size"]), len(rows), rows

    def write(
        self, x: torch.Tensor, labels: torch.Tensor, batch_size: int, rows: torch.Tensor
    ) -> None:
        meta = {"inputs": self._digest(x, labels), "batch_size": batch_size, "done": len(rows),
                "passes": counted_so_far()}  # fmt: skip

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, rows=rows.detach().cpu().numpy(), meta=np.array(json.dumps(meta)))

        write_atomic(self.path, write)


def readable_state(path: Path, say: Callable[[str], None]) -> Any:
    """A piece of defpert's own JSON state (a fingerprint, a stage's result), or None when it
    is missing or unreadable; an unreadable one is said in one line and then recomputed."""
    if not path.is_file():
        return None
    try:
        value = read_json(path)
    except DefpertError as exc:
        say(f"{exc}; recomputing what it recorded")
        return None
    if not isinstance(value, dict):
        say(f"{path} holds JSON of another shape; recomputing what it recorded")
        return None
    return value


class FileJournal:
    """A cascade's progress (strong or adaptive) in one ``.npz`` (arrays and JSON: nothing is
    unpickled), replaced atomically after each attack and at a running attack's bookmarks,
    at most once a minute. An unreadable journal is ignored: the cascade then starts over,
    it never stops the run."""

    interval = 60.0  # seconds between a running attack's bookmarks

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> CascadeState | None:
        if not distributed.main_decides(self.path.is_file()):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                running = None
                if meta.get("running") is not None:
                    running = Bookmark(
                        position={str(k): int(v) for k, v in meta["running"].items()},
                        tensors={name[len(RUNNING) :]: torch.from_numpy(saved[name])
                                 for name in saved.files if name.startswith(RUNNING)},
                    )  # fmt: skip
                return CascadeState(
                    done=list(meta["done"]),
                    worst=torch.from_numpy(saved["worst"]),
                    robust=torch.from_numpy(saved["robust"]),
                    broken_by={str(k): int(v) for k, v in meta["broken_by"].items()},
                    seconds={str(k): float(v) for k, v in meta["seconds"].items()},
                    generator=torch.from_numpy(saved["generator"]),
                    running=running,
                    contested=torch.from_numpy(saved["contested"])
                    if "contested" in saved.files
                    else None,
                    passes=meta.get("passes"),
                )
        except Exception:  # a journal of an older layout or a damaged file: start over
            return None

    def write(self, state: CascadeState) -> None:
        running = state.running
        meta = {"done": state.done, "broken_by": state.broken_by, "seconds": state.seconds,
                "running": running.position if running is not None else None,
                "passes": state.passes}  # fmt: skip
        arrays: dict[str, Any] = {f"{RUNNING}{name}": t.detach().cpu().numpy()
                  for name, t in (running.tensors.items() if running is not None else ())}  # fmt: skip
        if state.contested is not None:
            arrays["contested"] = state.contested.numpy()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, worst=state.worst.numpy(), robust=state.robust.numpy(),
                         generator=state.generator.numpy(), meta=np.array(json.dumps(meta)),
                         **arrays)  # fmt: skip

        write_atomic(self.path, write)


RUNNING = "running."  # the prefix of a running attack's bookmark tensors in the journal
