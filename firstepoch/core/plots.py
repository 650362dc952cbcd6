"""PNG plots with matplotlib's Agg backend (no display needed): loss curves, lr finder."""
from __future__ import annotations

from pathlib import Path

from firstepoch.core.io import atomic_open


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure as a PNG atomically, and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def _save_line_plot(fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_losses(recorder, path: Path) -> Path:
    """Training loss per batch and validation loss per epoch, against the batch count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(recorder.losses) + 1), recorder.losses, label="train", alpha=0.8)
    if recorder.history and recorder.losses:
        per_epoch = len(recorder.losses) / len(recorder.history)
        xs = [round(per_epoch * (i + 1)) for i in range(len(recorder.history))]
        ax.plot(xs, [row.get("valid_loss") for row in recorder.history], "o-", label="valid")
    return _save_line_plot(fig, ax, "batch", "loss", path)


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    return _save_line_plot(fig, ax, "learning rate", "loss (smoothed)", path)


def plot_confusion(confusion, classes: list[str], path: Path) -> Path:
    """A confusion matrix: rows are the true classes, columns the predicted ones."""
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.5 * n))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if max(map(len, classes)) > 3 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(int(confusion.max()), 1)
    for i in range(n):
        for j in range(n):
            value = int(confusion[i][j])
            if value:
                ax.text(j, i, value, ha="center", va="center", color="white" if value > top / 2 else "black",
                        fontsize=8)
    return _save(fig, path)
