"""defpert: defensive perturbations for image classifiers.

One projected-gradient engine serves attacks (ascend the attacker's loss) and defensive
perturbations (descend the defender's loss). Typical use from a notebook::

    from defpert import load_split, train, TrainConfig
    result = train(TrainConfig(dataset="mnist", epochs=1))
"""

__version__ = "0.1.0"

import importlib
import os
import sys
import types
from typing import Any

# Intel MKL's matrix products on AVX-512 CPUs split their sums across threads, so a linear
# layer's output changed in its last bits with the thread count, and defpert picks its
# thread count from the load: the same command gave other attack points on a busy machine.
# MKL's strict reproducible mode keeps each product independent of the thread count, at
# the best instruction set (read at MKL's first product; a user's own setting wins).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# Where each public name lives. They are imported on first use, so `defpert --help` and
# `defpert models` answer without waiting seconds for PyTorch and matplotlib to load.
_PUBLIC = {
    "fetch": "defpert.data",
    "load_split": "defpert.data",
    "DefpertError": "defpert.errors",
    "accuracy": "defpert.evaluate",
    "predict": "defpert.evaluate",
    "build_model": "defpert.models",
    "load_checkpoint": "defpert.models",
    "save_checkpoint": "defpert.models",
    "TrainConfig": "defpert.train",
    "TrainResult": "defpert.train",
    "train": "defpert.train",
    "draw_tsne": "defpert.tsne",
    "embed_tsne": "defpert.tsne",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'defpert' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """The package object: its public names win over its submodules' names.

    Importing a submodule binds it on the package (``defpert.train``, the module), which
    would hide the function of the same name that ``from defpert import train`` promises.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable through sys.modules and importlib
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "DefpertError",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "build_model",
    "draw_tsne",
    "embed_tsne",
    "fetch",
    "load_checkpoint",
    "load_split",
    "predict",
    "save_checkpoint",
    "train",
    "__version__",
]
