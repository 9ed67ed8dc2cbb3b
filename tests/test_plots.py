"""Figures (mnist_cnn/plots.py): what each figure shows, read off the matplotlib figure
before it is saved (panels, the images and labels in them, the plotted values, titles),
and the PNG files they become."""

import struct

import numpy as np
import pytest

from mnist_cnn import plots


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots functions draw, captured instead of saved; closed after
    the test."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    yield drawn
    for fig in drawn:
        plots._plt().close(fig)


def image_panels(fig):
    """The panels of `fig` that show an image, in drawing order."""
    return [ax for ax in fig.axes if ax.images]


def png_size(path):
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def digits(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def test_errors_grid_shows_each_misclassified_digit_with_its_labels(figures):
    """23 of 40 images wrong: a grid of 10 columns and 3 rows whose first 23 panels show
    those images, in order, each with its true label and the prediction."""
    images, labels = digits(40)
    preds = labels.copy()
    wrong = np.sort(np.random.default_rng(1).choice(40, 23, replace=False))
    preds[wrong] = (labels[wrong] + 3) % 10
    plots.errors_grid(images, labels, preds, "unused.png")
    fig = figures[-1]
    assert len(fig.axes) == 30
    shown = image_panels(fig)
    assert len(shown) == 23
    for ax, i in zip(shown, wrong):
        np.testing.assert_array_equal(ax.images[0].get_array(), images[i])
        assert [t.get_text() for t in ax.texts] == [str(labels[i]), str(preds[i])]
    assert fig.get_suptitle().startswith("23 test images misclassified (true label")


def test_errors_grid_title_counts_errors_and_carries_the_note(figures):
    labels = np.arange(12) % 10
    preds = labels.copy()
    preds[[2, 5]] = 0   # labels 2 and 5
    images = np.zeros((12, 28, 28), np.uint8)
    plots.errors_grid(images, labels, preds, "a.png")
    plots.errors_grid(images, labels, preds, "b.png", max_images=1, note="; widths")
    plots.errors_grid(images, labels, labels, "c.png")
    a, b, none = (fig.get_suptitle() for fig in figures)
    assert a.startswith("2 test images misclassified (") and "widths" not in a
    assert b.startswith("2 test images misclassified, the first 1 shown")
    assert b.endswith("; widths") and len(image_panels(figures[1])) == 1
    assert none.startswith("0 test images misclassified (") and not image_panels(figures[2])


def test_filters_grid_shows_each_first_layer_filter(figures):
    w = np.random.default_rng(2).normal(size=(5, 5, 1, 20))
    plots.filters_grid(w, "unused.png")
    fig = figures[-1]
    shown = image_panels(fig)
    assert len(fig.axes) == 20 and len(shown) == 20
    for f, ax in enumerate(shown):
        np.testing.assert_array_equal(ax.images[0].get_array(), w[:, :, 0, f])
    assert fig.get_suptitle() == "first-layer filters"


def test_learning_curves_plot_the_costs_and_the_evaluated_accuracies(figures):
    """Cost and log-likelihood every epoch (log scale); validation and test accuracy in
    percent at the evaluated epochs only (config.eval_every=2 skipped epoch 1)."""
    metrics = [{"epoch": 1, "train_loss": 2.0, "train_nll": 1.5},
               {"epoch": 2, "train_loss": 1.0, "train_nll": 0.8,
                "validation_accuracy": 0.9, "test_accuracy": 0.88},
               {"epoch": 3, "train_loss": 0.5, "train_nll": 0.4,
                "validation_accuracy": 0.95, "test_accuracy": 0.93}]
    plots.learning_curves(metrics, "unused.png", title="dbl_conv_relu")
    fig = figures[-1]
    cost, accuracy = fig.axes
    lines = lambda ax: [(list(l.get_xdata()), list(l.get_ydata())) for l in ax.lines]
    assert lines(cost) == [([1, 2, 3], [2.0, 1.0, 0.5]), ([1, 2, 3], [1.5, 0.8, 0.4])]
    assert cost.get_yscale() == "log"
    assert lines(accuracy) == [([2, 3], [90.0, 95.0]), ([2, 3], [88.0, 93.0])]
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["validation", "test"]
    assert fig.get_suptitle() == "dbl_conv_relu"


def test_sweep_plot_has_a_panel_per_field_and_a_line_per_value_of_the_other(figures):
    axes = [("learning_rate", [0.01, 0.1, 1.0]), ("shuffle", [True, False])]
    rows = [{"learning_rate": lr, "shuffle": sh, "best_validation_accuracy": acc}
            for (lr, sh), acc in zip([(1.0, True), (0.01, True), (0.1, True), (0.01, False),
                                      (0.1, False), (1.0, False)],
                                     [0.91, 0.97, 0.98, 0.95, 0.96, 0.90])]
    plots.sweep_plot(rows, axes, "unused.png")
    by_rate, by_shuffle = figures[-1].axes
    assert by_rate.get_xlabel() == "learning_rate" and by_rate.get_xscale() == "log"
    assert [(list(l.get_xdata()), list(l.get_ydata())) for l in by_rate.lines] == [
        ([0.01, 0.1, 1.0], [0.97, 0.98, 0.91]), ([0.01, 0.1, 1.0], [0.95, 0.96, 0.90])]
    assert [l.get_label() for l in by_rate.lines] == ["shuffle=True", "shuffle=False"]
    assert [t.get_text() for t in by_shuffle.get_xticklabels()] == ["True", "False"]
    assert len(by_shuffle.lines) == 3   # one per learning rate


def test_figures_are_pngs_sized_by_their_grids(tmp_path):
    """Saved for real: PNG files (no temporary left); an errors grid of 3 rows of 10 is
    over twice as tall as one of a single row of 4, and wider (the title is as wide as
    4 columns)."""
    images, labels = digits(30)
    many, few = labels.copy(), labels.copy()
    many[:25] = (labels[:25] + 1) % 10
    few[:4] = (labels[:4] + 1) % 10
    plots.errors_grid(images, labels, many, str(tmp_path / "many.png"))
    plots.errors_grid(images, labels, few, str(tmp_path / "few.png"))
    plots.filters_grid(np.random.default_rng(0).normal(size=(5, 5, 1, 20)),
                       str(tmp_path / "filters.png"))
    (w_many, h_many), (w_few, h_few) = png_size(tmp_path / "many.png"), png_size(
        tmp_path / "few.png")
    assert h_many > 2 * h_few and w_many > w_few
    assert png_size(tmp_path / "filters.png")[0] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.png", "filters.png",
                                                          "many.png"]
