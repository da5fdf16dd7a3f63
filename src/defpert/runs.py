"""Run directories and safe file writing.

Every file defpert writes goes through :func:`write_atomic`: a temporary file in the same
directory, flushed and fsynced, then renamed over the target. A reader (or a rerun after a
crash) therefore sees either the old complete file or the new complete file, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defpert.errors import DefpertError


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed; a clear error if that is impossible."""
    p = Path(path)
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
    from defpert import distributed

    target = Path(path)
    if distributed.active():
        if distributed.is_main():
            _write_atomic(target, write)
        distributed.barrier()
        return target
    return _write_atomic(target, write)


def _write_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    ensure_dir(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write_atomic(path, write)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as pretty JSON (keys kept in insertion order)."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    return write_bytes_atomic(path, text.encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a missing or malformed file into a one-line error."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DefpertError(f"{p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DefpertError(f"{p} is not a readable JSON file: {exc}") from None


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
