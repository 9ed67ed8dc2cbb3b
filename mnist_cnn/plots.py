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
    plt = _plt()
    tmp = path + ".tmp.png"
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
    for key, label in (("validation_accuracy", "validation"), ("test_accuracy", "test")):
        ax_acc.plot(epochs, [100 * m[key] for m in metrics], marker=".", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)
