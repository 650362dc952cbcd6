"""Labelled data for evaluating a trained model: (raw items, target tensor) in the model's class order."""
from __future__ import annotations

from pathlib import Path

import torch

from firstepoch.errors import FirstEpochError


def read_labelled(data: str | Path, predictor) -> tuple[list, torch.Tensor]:
    """An image folder (one sub-folder per class) or a CSV holding the bundle's target column."""
    data = Path(data)
    if not data.exists():
        raise FirstEpochError(f"{data}: no such file or folder")
    if predictor.preprocessor.kind == "image":
        return _image_folder(data, predictor.classes)
    if predictor.preprocessor.kind == "tabular":
        return _csv_rows(data, predictor)
    raise FirstEpochError(f"evaluating a {predictor.preprocessor.kind!r} model on files is not supported; "
                          f"use Learner.evaluate on a DataLoader")


def _image_folder(folder: Path, classes: list[str]) -> tuple[list, torch.Tensor]:
    from firstepoch.data.images import _check_folder, _labelled_by_folder, _warn_skipped, scan_images

    paths, labels = _labelled_by_folder(_check_folder(folder))
    if unknown := sorted(set(labels) - set(classes)):
        raise FirstEpochError(f"{folder}: class folder(s) {unknown} are not classes of this model "
                              f"({', '.join(classes)})")
    good, bad, _, _ = scan_images(paths)
    _warn_skipped(bad, len(paths))
    keep = set(good)
    index = {c: i for i, c in enumerate(classes)}
    return good, torch.tensor([index[lab] for p, lab in zip(paths, labels) if p in keep])


def _csv_rows(path: Path, predictor) -> tuple[list, torch.Tensor]:
    from firstepoch.data.tabular import read_rows

    target = predictor.preprocessor.target
    rows = [r for r in read_rows(path) if str(r.get(target, "")).strip() != ""]
    if not rows:
        raise FirstEpochError(f"{path}: no rows with a value in the target column {target!r}")
    if predictor.task == "classification":
        index = {c: i for i, c in enumerate(predictor.classes)}
        if unknown := sorted({r[target] for r in rows} - set(index)):
            raise FirstEpochError(f"{path}: {target!r} has values {unknown[:5]} this model does not know")
        return rows, torch.tensor([index[r[target]] for r in rows])
    try:
        return rows, torch.tensor([float(r[target]) for r in rows])
    except ValueError as exc:
        raise FirstEpochError(f"{path}: the target column {target!r} must be numeric ({exc})") from exc
