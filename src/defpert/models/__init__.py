"""Models: the zoo (:mod:`defpert.models.zoo`), safe checkpoints (safetensors weights and a
JSON card) and the robust checkpoints shipped with defpert."""

from defpert._lazy import exports

__getattr__, __all__ = exports(
    __name__,
    {
        "defpert.models.checkpoint": [
            "CARD_FORMAT",
            "checkpoint_digest",
            "environment",
            "library_versions",
            "load_checkpoint",
            "read_card",
            "save_checkpoint",
        ],
        "defpert.models.zoo": ["ARCHITECTURES", "Normalize", "build_model"],
    },
)
