import pickle

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from defpert import draw_tsne, embed_tsne
from defpert.cli import main
from defpert.errors import DefpertError


@pytest.fixture(scope="module")
def small(digits_test):
    return digits_test.images[:90], digits_test.labels[:90]


def _points(fig: Figure) -> int:
    return sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections)


def test_original_contract_numpy_and_tensor(small):
    x, y = small
    for inputs, labels in ((x, y), (x.numpy(), y.numpy())):
        fig = draw_tsne(inputs, labels)
        assert isinstance(fig, Figure)
        assert _points(fig) == 90
        assert len(fig.legends[0].get_texts()) == len(np.unique(y.numpy()))


def test_several_versions_panels_and_markers(small, digits_model):
    x, y = small
    versions = {"original": (x, y), "noisy": ((x + 0.2 * torch.rand_like(x)).clamp(0, 1), y)}
    panels = draw_tsne(versions, per_class=3)
    n = 3 * len(np.unique(y.numpy()))
    assert len(panels.axes) == 2 and _points(panels) == 2 * n
    markers = draw_tsne(
        versions, per_class=3, layout="markers", space="features", model=digits_model
    )
    assert len(markers.axes) == 1 and _points(markers) == 2 * n


def test_same_seed_same_embedding(small):
    x, y = small
    a = embed_tsne({"v": (x, y)}, seed=1)
    b = embed_tsne({"v": (x, y)}, seed=1)
    assert np.array_equal(a.coords, b.coords)
    assert 0.0 <= a.scores["v"]["knn_agreement"] <= 1.0


def test_features_separate_classes_better_than_adversarial(small, digits_model):
    from defpert.attacks import pgd
    from defpert.core.threat import LinfBall

    x, y = small
    x_adv = pgd(digits_model, x, y, threat=LinfBall(0.2), steps=10, step_size=0.04)
    emb = embed_tsne(
        {"original": (x, y), "adversarial": (x_adv, y)}, space="features", model=digits_model
    )
    assert emb.scores["original"]["knn_agreement"] > emb.scores["adversarial"]["knn_agreement"]


def test_bad_inputs(small):
    x, y = small
    with pytest.raises(DefpertError, match="labels are required"):
        draw_tsne(x)
    with pytest.raises(DefpertError, match="unknown space"):
        draw_tsne(x, y, space="logits")
    with pytest.raises(DefpertError, match="needs a model"):
        draw_tsne(x, y, space="features")
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DefpertError, match="NaN"):
        draw_tsne(bad, y)


def test_cli_npz(tmp_path, small, capsys):
    x, y = small
    np.savez(tmp_path / "d.npz", images=x.numpy(), labels=y.numpy())
    assert main(["tsne", "--npz", str(tmp_path / "d.npz"), "--per-class", "5"]) == 0
    assert (tmp_path / "d.png").stat().st_size > 1000
    capsys.readouterr()


def test_cli_refuses_pickled_npz(tmp_path, capsys):
    (tmp_path / "raw.npz").write_bytes(pickle.dumps({"images": 1}))
    np.savez(
        tmp_path / "objects.npz", images=np.array([object()], dtype=object), labels=np.zeros(1)
    )
    for name, cause in (
        ("raw.npz", "not a zip archive"),
        ("objects.npz", "pickled objects are refused"),
    ):
        assert main(["tsne", "--npz", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and cause in err  # the real cause, in one line


@pytest.mark.parametrize(("count", "grid"), [(3, (1, 3)), (4, (2, 2)), (5, (2, 3)), (7, (3, 3))])
def test_many_versions_wrap_into_even_rows_with_legible_text(small, count, grid):
    """At most three panels a row, the rows as even as they can be: four versions are two
    rows of two (the report's study), not a row of three and a lone panel."""
    x, y = small
    versions = {f"v{i}": ((x + 0.05 * i).clamp(0, 1), y) for i in range(count)}
    fig = draw_tsne(versions, per_class=2)
    shown = [ax for ax in fig.axes if ax.axison]
    rows, cols = grid
    assert len(shown) == count and len(fig.axes) == rows * cols  # the spare cells hidden
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == grid
    width_inches = fig.get_size_inches()[0]
    assert width_inches <= 3 * 4.2 + 1.4  # no wider than three panels, however many versions
    assert min(ax.title.get_fontsize() for ax in shown) >= 11
    assert fig.legends[0].get_texts()[0].get_fontsize() >= 11


def test_image_grid_shows_each_perturbation_on_a_colour_scale(digits_model):
    from defpert.data.datasets import load_split
    from defpert.report.figures import image_grid

    test = load_split("digits", "test").head(3)
    moved = (test.images + 0.1).clamp(0, 1)
    fig = image_grid({"original": test.images, "defensive": moved}, test.labels, digits_model, n=3)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1  # one colour bar under the one perturbation column
    low, high = bars[0].get_xlim()
    assert low == pytest.approx(-high) and high == pytest.approx(0.1, abs=1e-3)


def test_the_knn_score_can_reach_one_with_few_points_per_class():
    """With 5 points per class, k = 10 could never exceed 4/10; k fits the smallest class, so
    perfectly separated classes score 1, and random neighbours score the chance level."""
    from defpert.report.tsne import chance_agreement, neighbours

    labels = np.repeat(np.arange(10), 5)
    assert neighbours(labels, 10) == 4
    assert neighbours(labels, 3) == 3
    assert chance_agreement(labels) == pytest.approx(10 * 5 * 4 / (50 * 49))
    g = np.random.default_rng(0)
    centres = g.normal(size=(10, 50)) * 100  # far apart: one tight cluster per class
    x = (centres[labels] + g.normal(size=(50, 50))).astype(np.float32) / 1000 + 0.5
    emb = embed_tsne({"v": (x.reshape(50, 1, 5, 10), labels)}, per_class=5, seed=0)
    s = emb.scores["v"]
    assert s["k"] == 4 and s["knn_agreement"] == 1.0 and s["chance"] < 0.1
