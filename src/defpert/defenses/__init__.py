"""Defensive perturbations: the registry (each defense declared once) and the methods that
run them on the engine: :func:`defend`, :class:`Defense`, :class:`DefendedModel`."""

import importlib
from typing import Any

# Public names by module, imported on first use: the CLI reads the registry and the
# shipped index without loading PyTorch.
_WHERE = {
    "OBJECTIVE_OF": "defpert.defenses.methods",
    "DefendedModel": "defpert.defenses.methods",
    "Defense": "defpert.defenses.methods",
    "InnerAttack": "defpert.defenses.methods",
    "defend": "defpert.defenses.methods",
    "DEFENSES": "defpert.defenses.registry",
    "LABEL_FREE": "defpert.defenses.registry",
    "PROACTIVE": "defpert.defenses.registry",
    "REACTIVE": "defpert.defenses.registry",
    "ROBUSTIFY": "defpert.defenses.registry",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = sorted(_WHERE)
