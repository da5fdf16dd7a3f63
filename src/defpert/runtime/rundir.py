"""Run directories and safe file writing.

Every file defpert writes goes through :func:`write_atomic`: a temporary file in the same
directory, flushed and fsynced, then renamed over the target. A reader (or a rerun after a
crash) therefore sees either the old complete file or the new complete file, never half.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from defpert.errors import DefpertError

# The ending of defpert's own temporary files: the only files a run ever deletes by pattern
# (a user's ``.notes.tmp`` beside the results is theirs and stays).
TMP_SUFFIX = ".defpert.tmp"


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed; a clear error if that is impossible."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DefpertError(f"{p} is a file, not a directory: name a directory for the results")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DefpertError(f"cannot create directory {p}: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK):
        raise DefpertError(f"directory {p} is not writable")
    return p


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``write(tmp_path)`` fills a temporary file that replaces ``path``.

    Under torchrun only rank 0 writes; every rank returns once the file is in place.
    """
    from defpert.runtime import distributed

    target = Path(path)
    if distributed.active():
        if distributed.is_main():
            _write_atomic(target, write)
        distributed.barrier()
        return target
    return _write_atomic(target, write)


def _write_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    ensure_dir(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DefpertError(f"cannot write {target}: {exc.strerror or exc}") from None
    except Exception as exc:  # a library's own error (PyTorch's, safetensors'), not OSError
        tmp.unlink(missing_ok=True)
        said = disk_full(target.parent, exc)
        if said:
            raise DefpertError(f"cannot write {target}: {said}") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# Below this much free space, a library's failed write is taken for a full disk.
LOW_SPACE = 16 * 2**20


def disk_full(folder: Path, exc: Exception) -> str:
    """What to say when ``exc``, raised while writing into ``folder``, came from a full disk
    (PyTorch says "unexpected pos 576 vs 534", safetensors "No space left on device"); empty
    when the disk has room and the message does not say so (then it is not ours to explain)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = -1
    if "no space left" in first.lower() or "os error 28" in first or 0 <= free < LOW_SPACE:
        room = f"{free:,} bytes free" if free >= 0 else "free space unknown"
        return f"the disk is full ({room}; {first})"
    return ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy_atomic(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy a file so that ``target`` is either absent or complete, never half-written."""

    def copy(tmp: Path) -> None:
        shutil.copyfile(source, tmp)

    return write_atomic(target, copy)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write_atomic(path, write)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the pretty JSON defpert writes (keys kept in insertion order)."""
    return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode()


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as pretty JSON (keys kept in insertion order)."""
    return write_bytes_atomic(path, json_bytes(obj))


def write_json_here(path: str | os.PathLike[str], obj: Any) -> Path:
    """:func:`write_json` in this process alone (inside another write, which under torchrun
    only rank 0 makes)."""
    data = json_bytes(obj)

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return _write_atomic(Path(path), write)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a missing or malformed file into a one-line error."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DefpertError(f"{p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DefpertError(f"{p} is not a readable JSON file: {exc}") from None


def json_digest(obj: Any) -> str:
    """SHA-256 of ``obj`` as JSON saves it (keys sorted): the same before writing and after
    reading back, so a saved result can carry the digest of its own numbers."""
    canonical = json.loads(json.dumps(obj, default=_json_default))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def default_cache_dir() -> Path:
    """Per-user cache directory (``$XDG_CACHE_HOME/defpert`` or ``~/.cache/defpert``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "defpert"


# --------------------------------------------------------------------------- one command per run


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(saved: Any, wanted: Any) -> list[str]:
    """``["eps: 0.2 -> 0.3", ...]``: the settings in which two configs differ."""
    a, b = (
        _flatten(json.loads(json.dumps(saved, default=_json_default))),
        _flatten(json.loads(json.dumps(wanted, default=_json_default))),
    )
    return [
        f"{k}: {a.get(k, '-')} -> {b.get(k, '-')}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


@contextlib.contextmanager
def claim_run(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    *,
    overwrite: bool = False,
    remove_on_overwrite: tuple[str, ...] = (),
) -> Iterator[Path]:
    """Hold ``path`` for one command: a lock, and the config the results there belong to.

    A second command on the same directory stops with a message (the lock is released by
    the operating system even when the holder is killed). A directory whose
    ``config.json`` records other settings is refused, naming them, unless ``overwrite``
    (which first removes the named result folders/files). Temporary files left by a
    killed writer of defpert's are removed (only those: :data:`TMP_SUFFIX`). Under torchrun only rank 0 locks.
    """
    from defpert.runtime import distributed

    run = ensure_dir(path)
    lock_fh = None
    if distributed.is_main():
        lock_fh = open(run / ".lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_fh.close()
            raise DefpertError(
                f"another defpert command is writing into {run}; wait for it or use another --out"
            ) from None
        for stale in run.rglob(f".*{TMP_SUFFIX}"):  # what a killed writer of ours left
            if stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)
    try:
        saved_path = run / "config.json"
        if saved_path.is_file():
            saved = _saved_config(saved_path, overwrite)
            diff = config_differences(saved, config)
            if diff and not overwrite:
                shown = "; ".join(diff[:4]) + (
                    f"; and {len(diff) - 4} more" if len(diff) > 4 else ""
                )
                raise DefpertError(
                    f"{run} holds results of other settings ({shown}); "
                    "use another --out, or --overwrite to replace them"
                )
            if diff and distributed.is_main():
                for name in remove_on_overwrite:
                    target = run / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
        distributed.barrier()
        write_json(saved_path, config)
        yield run
    finally:
        if lock_fh is not None:
            fcntl.flock(lock_fh.fileno(), fcntl.LOCK_UN)
            lock_fh.close()


def _saved_config(path: Path, overwrite: bool) -> Any:
    """The settings a run directory's results belong to. An unreadable or malformed
    ``config.json`` is refused, saying how to get past it; with ``overwrite`` it counts as
    other settings (so the results it guarded are replaced)."""
    problem = ""
    try:
        saved = read_json(path)
        if not isinstance(saved, dict):
            problem = f"holds JSON of another shape ({type(saved).__name__}), not a run's settings"
    except DefpertError as exc:
        problem, saved = str(exc).removeprefix(f"{path} "), None
    if not problem:
        return saved
    if overwrite:
        return {"unreadable config.json": problem}
    raise DefpertError(f"{path} {problem}: the results beside it cannot be matched to any "
                       "settings; use --overwrite to replace them, or another --out")  # fmt: skip


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (to tie results to the exact checkpoint they came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
