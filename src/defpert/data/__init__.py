"""Datasets: the registry of built-in datasets, their IDX files fetched and verified, and
splits as tensors (N, C, H, W) in [0, 1]."""

import importlib
from typing import Any

# Public names by module, imported on first use: the CLI reads the registry and the
# shipped index without loading PyTorch.
_WHERE = {
    "DATASETS": "defpert.data.datasets",
    "SPLITS": "defpert.data.datasets",
    "DatasetSpec": "defpert.data.datasets",
    "Split": "defpert.data.datasets",
    "dataset_dir": "defpert.data.datasets",
    "default_data_dir": "defpert.data.datasets",
    "fetch": "defpert.data.datasets",
    "get_spec": "defpert.data.datasets",
    "is_fetched": "defpert.data.datasets",
    "load_split": "defpert.data.datasets",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = sorted(_WHERE)
