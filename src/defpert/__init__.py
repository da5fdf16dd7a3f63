"""defpert: defensive perturbations for image classifiers.

One projected-gradient engine serves attacks (ascend the attacker's loss) and defensive
perturbations (descend the defender's loss). Typical use from a notebook::

    from defpert import load_split, train, TrainConfig
    result = train(TrainConfig(dataset="mnist", epochs=1))
"""

__version__ = "0.1.0"

from defpert.data import fetch, load_split  # noqa: E402
from defpert.errors import DefpertError  # noqa: E402
from defpert.evaluate import accuracy, predict  # noqa: E402
from defpert.models import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from defpert.train import TrainConfig, TrainResult, train  # noqa: E402
from defpert.tsne import draw_tsne, embed_tsne  # noqa: E402

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
