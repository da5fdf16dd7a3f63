"""defpert: defensive perturbations for image classifiers.

One projected-gradient engine serves attacks (ascend the attacker's loss) and defensive
perturbations (descend the defender's loss). Typical use from a notebook::

    from defpert import load_split, train, TrainConfig
    result = train(TrainConfig(dataset="mnist", epochs=1))
"""

__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.machinery
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

# OpenMP's threads sleep when they wait at the end of a parallel region instead of spinning
# on the core a late thread needs: beside one busy program on 2 cores a training epoch took
# 1.37x its quiet time instead of 2.85x, and PGD ran 1.3x faster, with the quiet times and
# the weights unchanged (benchmarks/training_threads.py). Read when PyTorch loads OpenMP, so
# it holds where defpert is imported first (always in the ``defpert`` command).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Where each public name lives. They are imported on first use, so `defpert --help` and
# `defpert models` answer without waiting seconds for PyTorch and matplotlib to load.
_PUBLIC = {
    "fetch": "defpert.data.datasets",
    "load_split": "defpert.data.datasets",
    "DefpertError": "defpert.errors",
    "accuracy": "defpert.core.evaluate",
    "predict": "defpert.core.evaluate",
    "build_model": "defpert.models.zoo",
    "load_checkpoint": "defpert.models.checkpoint",
    "save_checkpoint": "defpert.models.checkpoint",
    "TrainConfig": "defpert.train",
    "TrainResult": "defpert.train",
    "train": "defpert.train",
    "DefenseResult": "defpert.results",
    "draw_tsne": "defpert.report.tsne",
    "embed_tsne": "defpert.report.tsne",
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

# Modules that moved when the package took its layout (core/, study/, report/, runtime/, ...):
# the old names keep working for one release, with a DeprecationWarning naming the new one.
MOVED = {
    "defpert.threat": "defpert.core.threat",
    "defpert.objectives": "defpert.core.objectives",
    "defpert.engine": "defpert.core.engine",
    "defpert.evaluate": "defpert.core.evaluate",
    "defpert.defense_names": "defpert.defenses.registry",
    "defpert.idx": "defpert.data.idx",
    "defpert.shipped": "defpert.models.shipped",
    "defpert.dp_config": "defpert.study.config",
    "defpert.rq1": "defpert.study.dp",
    "defpert.store": "defpert.study.store",
    "defpert.sweep": "defpert.study.sweep",
    "defpert.reproduce": "defpert.study.reproduce",
    "defpert.figures": "defpert.report.figures",
    "defpert.tsne": "defpert.report.tsne",
    "defpert.devices": "defpert.runtime.devices",
    "defpert.threads": "defpert.runtime.threads",
    "defpert.distributed": "defpert.runtime.distributed",
    "defpert.calibrate": "defpert.runtime.calibrate",
    "defpert.runs": "defpert.runtime.rundir",
    "defpert.bars": "defpert.runtime.progress",
    "defpert.reference": "defpert.testing",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module it moved to (the same module object)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        import warnings

        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=3)  # fmt: skip
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # the module it moved to is already executed


sys.meta_path.insert(0, _MovedFinder())


__all__ = [
    "DefenseResult",
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
