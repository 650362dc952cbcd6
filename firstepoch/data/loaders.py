"""`DataLoaders`: train/valid(/test) loaders plus what the data knows (task, classes, preprocessing), its
constructors for each kind of data, and the table of preprocessors a bundle names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader

from firstepoch.data.core import (TASKS, Preprocessor, TensorDataset, TensorPreprocessor, check_batch_size, infer_task,
                                  make_loader, split_indices, tensor_fingerprint)
from firstepoch.errors import FirstEpochError

# Each kind of data lives in its own module, imported when it is used: `import firstepoch` stays light (the image
# module brings torchvision, and with it torch's compiler and triton).


def _image(config: dict) -> Preprocessor:
    from firstepoch.data.images import ImagePreprocessor

    return ImagePreprocessor.from_config(config)


def _tabular(config: dict) -> Preprocessor:
    from firstepoch.data.tabular import TabularPreprocessor

    return TabularPreprocessor.from_config(config)


def _text(config: dict) -> Preprocessor:
    from firstepoch.data.lm import TextPreprocessor

    return TextPreprocessor.from_config(config)


# a bundle's `preprocessing.kind` -> how to rebuild its preprocessor
PREPROCESSORS: dict[str, Callable[[dict], Preprocessor]] = {
    "tensor": TensorPreprocessor.from_config, "image": _image, "tabular": _tabular, "text": _text}


def preprocessor_from_config(config: dict) -> Preprocessor:
    """The preprocessor a bundle's `preprocessing` config describes."""
    kind = config.get("kind")
    if kind not in PREPROCESSORS:
        raise FirstEpochError(f"unknown preprocessing kind {kind!r}; known: {', '.join(sorted(PREPROCESSORS))}")
    return PREPROCESSORS[kind](config)


@dataclass
class DataLoaders:
    """Train and valid (and optional test) loaders plus what the data knows.

    Attributes:
        train, valid, test: torch DataLoaders whose samplers are `EpochSampler`s.
        task: "classification" or "regression".
        classes: class names for classification (index = label id), else None.
        preprocessor: turns a raw item into a model input; saved in bundles.
        input_shape: shape of one input tensor, e.g. [3, 64, 64] or [13].
        n_out: number of model outputs (classes, or regression targets).
        fingerprint: a hash of the data, recorded in bundles.
    """

    train: DataLoader
    valid: DataLoader
    task: str
    preprocessor: Preprocessor
    input_shape: list[int]
    n_out: int
    classes: list[str] | None = None
    test: DataLoader | None = None
    fingerprint: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise FirstEpochError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")

    @property
    def batch_size(self) -> int:
        return self.train.batch_size

    def one_batch(self):
        """The first training batch (inputs, targets)."""
        return next(iter(self.train))

    # Each kind of data is read in its own module, which gives the fields of a DataLoaders.
    @classmethod
    def from_tensors(cls, x, y, valid_pct: float = 0.2, seed: int = 42, task: str | None = None,
                     batch_size: int | None = None, x_valid=None, y_valid=None) -> "DataLoaders":
        """Loaders over plain tensors or arrays; float targets mean regression, integer targets classification."""
        return from_tensors(x, y, valid_pct=valid_pct, seed=seed, task=task, batch_size=batch_size,
                            x_valid=x_valid, y_valid=y_valid)

    @classmethod
    def from_folder(cls, path, **kwargs) -> "DataLoaders":
        """Images labelled by sub-folder names (arguments: `firstepoch.data.images.folder_parts`)."""
        from firstepoch.data.images import folder_parts

        return cls(**folder_parts(path, **kwargs))

    @classmethod
    def from_name_func(cls, path, files=None, label_func=None, **kwargs) -> "DataLoaders":
        """Images labelled from their file name by a function or regex (`firstepoch.data.images.name_func_parts`)."""
        from firstepoch.data.images import name_func_parts

        return cls(**name_func_parts(path, files, label_func, **kwargs))

    @classmethod
    def from_text(cls, path, **kwargs) -> "DataLoaders":
        """Next-token windows over a text corpus (arguments: `firstepoch.data.lm.text_parts`)."""
        from firstepoch.data.lm import text_parts

        return cls(**text_parts(path, **kwargs))

    @classmethod
    def from_csv(cls, path, target: str, **kwargs) -> "DataLoaders":
        """Tabular data from a CSV file with a `target` column (arguments: `firstepoch.data.tabular.csv_parts`)."""
        from firstepoch.data.tabular import csv_parts

        return cls(**csv_parts(path, target, **kwargs))


def from_tensors(x, y, valid_pct: float = 0.2, seed: int = 42, task: str | None = None,
                 batch_size: int | None = None, x_valid=None, y_valid=None) -> DataLoaders:
    """`DataLoaders` over plain tensors or arrays (shape (N, ...) and (N,) or (N, k))."""
    x = torch.as_tensor(x).float()
    y = torch.as_tensor(y)
    if len(x) != len(y):
        raise FirstEpochError(f"x has {len(x)} rows but y has {len(y)}; they must match")
    task = task or infer_task(y)
    y = y.long() if task == "classification" else y.float()
    if x_valid is not None:
        xv, yv = torch.as_tensor(x_valid).float(), torch.as_tensor(y_valid)
        yv = yv.long() if task == "classification" else yv.float()
        xt, yt = x, y
    else:
        train_idx, valid_idx = split_indices(len(x), valid_pct, seed)
        xt, yt, xv, yv = x[train_idx], y[train_idx], x[valid_idx], y[valid_idx]
    bs = check_batch_size(batch_size, len(xt), len(xv), "tensors")
    if task == "classification":
        n_out = int(y.max().item()) + 1
        classes = [str(i) for i in range(n_out)]
    else:
        n_out = 1 if y.ndim == 1 else y.shape[1]
        classes = None
    return DataLoaders(
        train=make_loader(TensorDataset(xt, yt), bs, train=True, seed=seed),
        valid=make_loader(TensorDataset(xv, yv), bs, train=False, seed=seed),
        task=task, preprocessor=TensorPreprocessor(list(x.shape[1:])), input_shape=list(x.shape[1:]),
        n_out=n_out, classes=classes, fingerprint=tensor_fingerprint(x, y),
    )
