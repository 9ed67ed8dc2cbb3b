"""Figures. Each function writes only the file it is given."""

from __future__ import annotations

import os


def _plt():
    """matplotlib.pyplot on the Agg backend, imported on first use (it is slow to load)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    from mnist_cnn import metrics_io
    plt = _plt()
    with metrics_io.temp_beside(path, ".tmp.png") as tmp:   # a unique name: no collision
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, path)


def learning_curves(metrics: list[dict], path: str, title: str = ""):
    """Training cost and validation/test accuracy per epoch, side by side."""
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = _plt().subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], marker=".", label="cost (with L2)")
    ax_loss.plot(epochs, [m["train_nll"] for m in metrics], marker=".", label="log-likelihood")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training cost")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    measured = [m for m in metrics if "validation_accuracy" in m]   # config.eval_every
    for key, label in (("validation_accuracy", "validation"), ("test_accuracy", "test")):
        ax_acc.plot([m["epoch"] for m in measured], [100 * m[key] for m in measured],
                    marker=".", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def errors_grid(images, labels, predictions, path: str, max_images: int = 100,
                title: str = "", note: str = ""):
    """The misclassified test images in a grid, as the chapter shows its 33: the true
    label at the top right of each, the network's prediction at the bottom right.
    note: appended to the default title (e.g. how the images were preprocessed)."""
    import numpy as np
    all_wrong = np.flatnonzero(np.asarray(predictions) != np.asarray(labels))
    wrong = all_wrong[:max_images]
    cols = max(1, min(10, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.15 * rows + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(np.asarray(images[i]), cmap="Greys", vmin=0, vmax=255)
        ax.text(27, 1, str(int(labels[i])), color="green", ha="right", va="top", fontsize=9)
        ax.text(27, 27, str(int(predictions[i])), color="red", ha="right", va="bottom",
                fontsize=9)
    shown = "" if len(wrong) == len(all_wrong) else f", the first {len(wrong)} shown"
    fig.suptitle(title or f"{len(all_wrong)} test images misclassified{shown} "
                 f"(true label top right, prediction bottom right){note}", fontsize=9,
                 y=1.0)
    _save(fig, path)


def filters_grid(kernel, path: str, title: str = "first-layer filters"):
    """A conv layer's learned kh x kw filters (HWIO, first input channel) as small grey
    images, darker = larger weight, as the chapter's figure of the 20 feature maps."""
    import numpy as np
    w = np.asarray(kernel)[:, :, 0, :]
    n = w.shape[-1]
    cols = min(10, n)
    rows = -(-n // cols)
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols, 0.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for f, ax in zip(range(n), axes.flat):
        ax.imshow(w[:, :, f], cmap="Greys", interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def sweep_plot(rows: list[dict], axes, path: str):
    """Best validation accuracy against each swept field: one panel per field; with two
    fields, one line per value of the other field."""
    fields = [f for f, _ in axes]
    fig, panels = _plt().subplots(1, len(fields), figsize=(4.8 * len(fields), 3.8),
                                  squeeze=False)
    for ax, (field, values) in zip(panels[0], axes):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        pos = {repr(v): (v if numeric else i) for i, v in enumerate(values)}
        others = [f for f in fields if f != field]
        if len(others) == 1:
            other = others[0]
            for ov in dict(axes)[other]:
                pts = sorted((pos[repr(r[field])], r["best_validation_accuracy"])
                             for r in rows if r[other] == ov)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{other}={ov}")
            ax.legend(fontsize=8)
        else:
            pts = sorted((pos[repr(r[field])], r["best_validation_accuracy"]) for r in rows)
            ax.plot(*zip(*pts), marker="o", linestyle="-" if not others else "none")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        elif all(v > 0 for v in values) and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(field)
        ax.set_ylabel("best validation accuracy")
        ax.grid(alpha=0.3)
    _save(fig, path)
