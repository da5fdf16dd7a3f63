"""t-SNE views of data versions (RQ2: what do original, adversarial and defensive data
look like to the model?).

``draw_tsne(inputs, labels)`` keeps the original research code's contract and returns a
matplotlib ``Figure`` (it never calls ``plt.show()``). Several versions are embedded
*jointly*, so their positions can be compared, and drawn one panel (or one marker) per
version with one colour per class. Beside the picture, each version gets numbers people
can compare: the k-nearest-neighbour class agreement (k below the smallest class's points, beside the
agreement random neighbours would have) and the silhouette score of its points in the
embedded space.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from defpert.core.engine import check_images
from defpert.errors import DefpertError
from defpert.runtime import distributed
from defpert.runtime.devices import model_device

ArrayLike = Any  # numpy array or torch tensor
SPACES = ("pixels", "features")
_MARKERS = ("o", "x", "^", "s", "D", "v", "P", "*")


@dataclass
class Embedding:
    """A joint 2-D t-SNE embedding of one or more data versions."""

    coords: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N,)
    version: np.ndarray  # (N,) index into ``names``
    names: list[str]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


def _as_numpy(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def penultimate_features(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """The input of the model's last ``nn.Linear`` layer (N, D): its penultimate features.

    Under torchrun each rank computes its share of the batches and all ranks get all rows.
    """
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise DefpertError("the model has no nn.Linear layer to take features from")
    check_images(model, inputs)
    out = torch.empty(len(inputs), last[-1].in_features)
    bounds = [(lo, min(lo + batch_size, len(inputs))) for lo in range(0, len(inputs), batch_size)]
    captured: list[torch.Tensor] = []
    hook = last[-1].register_forward_hook(
        lambda _m, inp, _out: captured.append(inp[0].detach().cpu())
    )
    device = model_device(model)
    try:
        with torch.no_grad():
            for i in distributed.my_chunks(len(bounds)):
                lo, hi = bounds[i]
                model(inputs[lo:hi].to(device))
                out[lo:hi] = captured.pop().flatten(1)
    finally:
        hook.remove()
    return distributed.share_rows(out, bounds)


def _sample_per_class(
    labels: np.ndarray, per_class: int | None, rng: np.random.Generator
) -> np.ndarray:
    if per_class is None:
        return np.arange(len(labels))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def embed_tsne(
    versions: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    space: str = "pixels",
    model: nn.Module | None = None,
    seed: int = 0,
    per_class: int | None = None,
    perplexity: float = 30.0,
    k: int = 10,
) -> Embedding:
    """Embed every version jointly with openTSNE's FFT-accelerated t-SNE (after PCA to 50
    dimensions): a few thousand points take seconds, and a fixed seed gives the same map.

    The same examples (chosen by ``per_class`` from the first version's labels) are taken
    from every version, so the panels show the same points transformed.
    """
    from openTSNE import TSNE
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    if space not in SPACES:
        raise DefpertError(f"unknown space {space!r}; choose one of: {', '.join(SPACES)}")
    if space == "features" and model is None:
        raise DefpertError("space 'features' needs a model (a checkpoint)")
    if not versions:
        raise DefpertError("nothing to embed: no data version given")
    rng = np.random.default_rng(seed)
    names = list(versions)
    first_labels = _as_numpy(versions[names[0]][1]).astype(np.int64).reshape(-1)
    chosen = _sample_per_class(first_labels, per_class, rng)
    feats, labels, version = [], [], []
    for v, name in enumerate(names):
        x = _as_numpy(versions[name][0]).astype(np.float32)
        y = _as_numpy(versions[name][1]).astype(np.int64).reshape(-1)
        if len(x) != len(y):
            raise DefpertError(f"version {name!r}: {len(x)} inputs but {len(y)} labels")
        if len(y) != len(first_labels):
            raise DefpertError(
                f"version {name!r} has {len(y)} examples, {names[0]!r} has {len(first_labels)}"
            )
        if not np.isfinite(x).all():
            raise DefpertError(f"version {name!r} holds NaN or infinite values")
        x, y = x[chosen], y[chosen]
        if space == "features":
            assert model is not None
            f = penultimate_features(
                model, torch.from_numpy(x).reshape(len(x), *_image_shape(x))
            ).numpy()
        else:
            f = x.reshape(len(x), -1)
        feats.append(f)
        labels.append(y)
        version.append(np.full(len(y), v))
    data = np.concatenate(feats)
    n = len(data)
    if n < 3:
        raise DefpertError(f"t-SNE needs at least 3 points, got {n}")
    if data.shape[1] > 50 and n > 50:
        data = PCA(50, random_state=seed).fit_transform(data)
    coords = np.asarray(
        TSNE(
            n_components=2,
            perplexity=min(perplexity, (n - 1) / 3),
            initialization="pca",
            random_state=seed,
            n_jobs=1,
            verbose=False,
        ).fit(data)  # fmt: skip
    )
    lab, ver = np.concatenate(labels), np.concatenate(version)
    scores: dict[str, dict[str, float]] = {}
    for v, name in enumerate(names):
        pts, y = coords[ver == v], lab[ver == v]
        kk = neighbours(y, k)
        _, nn_idx = NearestNeighbors(n_neighbors=kk + 1).fit(pts).kneighbors(pts)
        agreement = float((y[nn_idx[:, 1:]] == y[:, None]).mean())
        sil = float(silhouette_score(pts, y)) if 1 < len(np.unique(y)) < len(y) else float("nan")
        scores[name] = {"knn_agreement": agreement, "k": kk, "chance": chance_agreement(y),
                        "silhouette": sil}  # fmt: skip
    return Embedding(coords, lab, ver, names, scores)


def neighbours(labels: np.ndarray, k: int) -> int:
    """The k of the k-NN agreement: at most one less than the smallest class's points, so
    that a perfectly separated class can score 1 (with ~5 points per class and k = 10, at
    most about half of a point's neighbours could share its class, and a clean map read as
    no clusters)."""
    smallest = int(np.bincount(labels)[np.unique(labels)].min()) if len(labels) else 1
    return max(1, min(k, smallest - 1, len(labels) - 1))


def chance_agreement(labels: np.ndarray) -> float:
    """The k-NN agreement of neighbours drawn at random: what a map without clusters scores."""
    n = len(labels)
    if n < 2:
        return float("nan")
    counts = np.bincount(labels)[np.unique(labels)]
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def _image_shape(x: np.ndarray) -> tuple[int, ...]:
    """The shape of one image of ``x``: (N, C, H, W), (N, H, W) one channel, or (N, H*W)
    square; anything else is refused in one line (a model's features need images)."""
    if x.ndim == 4:
        return tuple(x.shape[1:])
    if x.ndim == 3:
        return (1, *x.shape[1:])
    side = int(round(np.sqrt(x.shape[1]))) if x.ndim == 2 else 0
    if x.ndim != 2 or side * side != x.shape[1]:
        raise DefpertError(
            f"images of shape {tuple(x.shape)} are not images for --space features: give "
            "(N, C, H, W), (N, H, W) or flat square (N, H*W) arrays"
        )
    return (1, side, side)


def draw_tsne(
    inputs: ArrayLike | Mapping[str, tuple[ArrayLike, ArrayLike]],
    labels: ArrayLike | None = None,
    *,
    space: str = "pixels",
    model: nn.Module | None = None,
    seed: int = 0,
    per_class: int | None = None,
    layout: str = "panels",
    class_names: list[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot a t-SNE of ``inputs`` coloured by ``labels``; return the matplotlib Figure.

    ``inputs`` is an array or tensor (N, ...) with integer ``labels`` (N,), or a mapping
    ``{"original": (x, y), "adversarial": (x_adv, y), ...}`` of several versions, drawn
    one panel per version (``layout="panels"``) or one marker per version
    (``layout="markers"``). Each version's k-NN class agreement and silhouette score are
    shown with it (and available from :func:`embed_tsne`).

    >>> fig = draw_tsne(x, y)
    >>> fig.savefig("tsne.png")
    """
    if isinstance(inputs, Mapping):
        versions = dict(inputs)
    else:
        if labels is None:
            raise DefpertError("draw_tsne(inputs, labels): labels are required")
        versions = {"data": (inputs, labels)}
    if layout not in ("panels", "markers"):
        raise DefpertError(f"unknown layout {layout!r}; use panels or markers")
    emb = embed_tsne(versions, space=space, model=model, seed=seed, per_class=per_class)
    return plot_embedding(emb, layout=layout, class_names=class_names, title=title)


def plot_embedding(
    emb: Embedding,
    *,
    layout: str = "panels",
    class_names: list[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw an :class:`Embedding`: one colour per class, one panel or marker per version."""
    classes = np.unique(emb.labels)
    colours = {c: f"C{i % 10}" for i, c in enumerate(classes)}
    panels = len(emb.names) if layout == "panels" else 1
    # at most three panels a row, so that titles and legends stay legible when the figure
    # is shrunk to a report's width, and the rows as even as they can be (four panels are
    # two rows of two, not three and a lone one)
    nrows = -(-panels // 3)
    ncols = -(-panels // nrows)
    fig = Figure(figsize=(4.2 * ncols + 1.4, 4.4 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for spare in grid[panels:]:
        spare.set_axis_off()
    axes = grid[:panels]
    for v, name in enumerate(emb.names):
        ax = axes[v if layout == "panels" else 0]
        mask = emb.version == v
        s = emb.scores[name]
        for c in classes:
            sel = mask & (emb.labels == c)
            label = (
                (class_names[c] if class_names else str(c))
                if v == 0 or layout == "panels"
                else None
            )
            ax.scatter(emb.coords[sel, 0], emb.coords[sel, 1], s=9, c=colours[c],
                       marker=_MARKERS[v % len(_MARKERS)] if layout == "markers" else "o",
                       label=label, alpha=0.8, linewidths=0.6)  # fmt: skip
        if layout == "panels":
            ax.set_title(f"{name}\n{s['k']}-NN agreement {s['knn_agreement']:.2f} "
                         f"(chance {s['chance']:.2f}), silhouette {s['silhouette']:.2f}",
                         fontsize=12)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
    if layout == "markers":
        parts = [f"{_MARKERS[v % len(_MARKERS)]} {n}: k-NN {emb.scores[n]['knn_agreement']:.2f}"
                 for v, n in enumerate(emb.names)]  # fmt: skip
        axes[0].set_title("   ".join(parts), fontsize=11)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        legend_labels,
        loc="outside right center",
        title="class",
        fontsize=11,
        title_fontsize=11,
        markerscale=2,
    )
    if title:
        fig.suptitle(title)
    return fig
