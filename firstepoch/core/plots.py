"""PNG plots with matplotlib's Agg backend (no display needed): loss curves, lr finder."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(recorder, path: Path) -> Path:
    """Training loss per batch and validation loss per epoch, against the batch count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(recorder.losses) + 1), recorder.losses, label="train", alpha=0.8)
    if recorder.history and recorder.losses:
        per_epoch = len(recorder.losses) / len(recorder.history)
        xs = [round(per_epoch * (i + 1)) for i in range(len(recorder.history))]
        ax.plot(xs, [row.get("valid_loss") for row in recorder.history], "o-", label="valid")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
