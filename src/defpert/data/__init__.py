"""Datasets: the registry of built-in datasets, their IDX files fetched and verified, and
splits as tensors (N, C, H, W) in [0, 1]."""

from defpert._lazy import exports

__getattr__, __all__ = exports(
    __name__,
    {
        "defpert.data.datasets": [
            "DATASETS",
            "SPLITS",
            "DatasetSpec",
            "Split",
            "dataset_dir",
            "default_data_dir",
            "fetch",
            "get_spec",
            "is_fetched",
            "load_split",
        ],
    },
)
