"""What a classifier gets wrong, as pictures and a table (fastai's ClassificationInterpretation).

`interpret(predictor, data, out_dir)` writes `confusion.png`, `top_losses.png` (the items the model is most
wrong about, with predicted / actual / probability) and `per_class.csv` (precision, recall, F1, support),
and returns the per-class rows and the paths.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F

from firstepoch.core.io import atomic_open
from firstepoch.core.metrics import confusion_matrix
from firstepoch.core.plots import _pyplot, _save, plot_confusion


def per_class(confusion: torch.Tensor, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true class)."""
    rows = []
    for i, name in enumerate(classes):
        true_pos = float(confusion[i, i])
        predicted, actual = float(confusion[:, i].sum()), float(confusion[i].sum())
        precision = true_pos / predicted if predicted else 0.0
        recall = true_pos / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(actual)})
    return rows


def plot_top_losses(items: list, predictor, outputs: torch.Tensor, targets: torch.Tensor, path: Path,
                    k: int = 9) -> Path:
    """A grid of the `k` items with the highest loss: each titled predicted / actual / probability."""
    losses = F.cross_entropy(outputs, targets, reduction="none")
    worst = losses.topk(min(k, len(losses))).indices.tolist()
    plt = _pyplot()
    columns = min(3, len(worst))
    rows = -(-len(worst) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    probs = outputs.softmax(-1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        pixels = predictor.preprocessor.pixels(items[i])  # uint8 (C, H, W)
        image = pixels.permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        guess = int(probs[i].argmax())
        ax.set_title(f"{predictor.classes[guess]} / {predictor.classes[int(targets[i])]}\n"
                     f"p={float(probs[i, guess]):.2f} loss={float(losses[i]):.2f}", fontsize=9)
    fig.suptitle("predicted / actual", fontsize=10)
    return _save(fig, path)


def interpret(predictor, data: str | Path | tuple, out_dir: str | Path) -> dict:
    """Confusion matrix, top losses and per-class table of a classifier on labelled data in `out_dir`;
    `data` may also be the (items, outputs, targets) of `predictor.labelled_outputs`, to predict only once.

    Returns {"per_class": rows, "confusion": path, "top_losses": path (images), "table": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, outputs, targets = data if isinstance(data, tuple) else predictor.labelled_outputs(data)
    confusion = confusion_matrix(outputs, targets)
    rows = per_class(confusion, predictor.classes)
    table = out_dir / "per_class.csv"
    with atomic_open(table, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = {"per_class": rows, "table": table,
              "confusion": plot_confusion(confusion, predictor.classes, out_dir / "confusion.png")}
    if predictor.preprocessor.takes_files:  # images: show the worst ones
        result["top_losses"] = plot_top_losses(items, predictor, outputs, targets, out_dir / "top_losses.png")
    return result
