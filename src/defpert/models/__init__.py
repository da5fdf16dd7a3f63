"""Models: the zoo (:mod:`defpert.models.zoo`), safe checkpoints (safetensors weights and a
JSON card) and the robust checkpoints shipped with defpert."""

import importlib
from typing import Any

# Public names by module, imported on first use: the CLI reads the registry and the
# shipped index without loading PyTorch.
_WHERE = {
    "CARD_FORMAT": "defpert.models.checkpoint",
    "checkpoint_digest": "defpert.models.checkpoint",
    "environment": "defpert.models.checkpoint",
    "library_versions": "defpert.models.checkpoint",
    "load_checkpoint": "defpert.models.checkpoint",
    "read_card": "defpert.models.checkpoint",
    "save_checkpoint": "defpert.models.checkpoint",
    "ARCHITECTURES": "defpert.models.zoo",
    "Normalize": "defpert.models.zoo",
    "build_model": "defpert.models.zoo",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


__all__ = sorted(_WHERE)
