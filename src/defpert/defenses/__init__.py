"""Defensive perturbations: the registry (each defense declared once) and the methods that
run them on the engine: :func:`defend`, :class:`Defense`, :class:`DefendedModel`."""

from defpert._lazy import exports

__getattr__, __all__ = exports(
    __name__,
    {
        "defpert.defenses.methods": [
            "OBJECTIVE_OF",
            "DefendedModel",
            "Defense",
            "InnerAttack",
            "defend",
        ],
        "defpert.defenses.registry": [
            "DEFENSES",
            "LABEL_FREE",
            "PROACTIVE",
            "REACTIVE",
            "ROBUSTIFY",
        ],
    },
)
