"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip), with exact errors.

The format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
one big-endian int32 per dimension, then the data in C order. A file that deviates in any
way is refused with a message naming the file and the problem.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from defpert.errors import DefpertError

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08


def read_idx_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the raw (decompressed) bytes of an IDX file, plain or gzip."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DefpertError(f"IDX file {p} does not exist") from None
    except OSError as exc:
        raise DefpertError(f"cannot read IDX file {p}: {exc.strerror or exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DefpertError(f"{p} is a corrupt or truncated gzip file ({exc})") from None
    return raw


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic number, dimensions and length."""
    if len(raw) < 4:
        raise DefpertError(f"{name} is not an IDX file: only {len(raw)} bytes long")
    if raw[0] != 0 or raw[1] != 0:
        raise DefpertError(
            f"{name} is not an IDX file: bad magic number 0x{raw[:4].hex()} (expected 0x000008NN)"
        )
    if raw[2] != _UBYTE:
        raise DefpertError(
            f"{name} has IDX type code 0x{raw[2]:02x}; only unsigned bytes (0x08) are supported"
        )
    ndim = raw[3]
    if ndim == 0:
        raise DefpertError(f"{name} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DefpertError(f"{name} is truncated inside its header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DefpertError(
            f"{name} is {what}: header declares shape {dims} ({expected} bytes), "
            f"file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a uint8 numpy array."""
    return parse_idx(read_idx_bytes(path), str(path))


def read_images_and_labels(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file (N, H, W) and its label file (N,), checking that they agree."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DefpertError(
            f"{images_path} should hold images of shape (N, H, W), found shape {images.shape}"
        )
    if labels.ndim != 1:
        raise DefpertError(f"{labels_path} should hold labels of shape (N,), found {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DefpertError(
            f"image/label count mismatch: {images_path} has {images.shape[0]} images, "
            f"{labels_path} has {labels.shape[0]} labels"
        )
    return images, labels


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes (used by tests and by tools that export data)."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape
    )
    return header + arr.tobytes()
