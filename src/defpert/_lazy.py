"""Public names of a package imported on first use (internal).

A package's ``__init__`` lists where each public name lives; the module holding it is
imported when the name is first read, so the command line can read a registry or an index
inside the package without loading PyTorch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, list[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for ``package``; ``where`` maps a module to its names."""
    home = {name: module for module, names in where.items() for name in names}

    def getattr_(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home[name]), name)

    return getattr_, sorted(home)
