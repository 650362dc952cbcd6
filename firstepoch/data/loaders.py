"""`DataLoaders`: train/valid(/test) loaders plus what the data knows (task, classes, preprocessing).

Every loader draws its order from an `EpochSampler`, a pure function of (seed, epoch), so a run resumed
from a checkpoint, or one shard of a distributed run, sees exactly the batches it would have seen.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from firstepoch.errors import FirstEpochError

TASKS = ("classification", "regression", "language_model")
DEFAULT_BATCH_SIZE = 64


class EpochSampler(torch.utils.data.Sampler):
    """Indices of one epoch: shuffled by (seed, epoch), sharded by (rank, world_size), resumable by `skip`.

    With `with_epoch=True` it yields `(epoch, index)` so a dataset can seed its augmentation per item.
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, with_epoch: bool = False):
        self.n, self.shuffle, self.seed, self.with_epoch = n, shuffle, seed, with_epoch
        self.epoch, self.skip, self.rank, self.world_size = 0, 0, 0, 1

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start `epoch`, leaving out its first `skip` items of this rank (to resume mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:  # pad so every rank gets the same count, as DistributedSampler does
            order += order[: (-len(order)) % self.world_size]
            order = order[self.rank :: self.world_size]
        return order[self.skip :]

    def __iter__(self) -> Iterator:
        order = self._order()
        return iter([(self.epoch, i) for i in order] if self.with_epoch else order)

    @property
    def per_rank(self) -> int:
        """Items each rank sees in a whole epoch."""
        return -(-self.n // self.world_size)

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)


class Preprocessor(Protocol):
    """Turns one raw item (a file, a CSV row, a tensor) into the model's input tensor, and back to JSON."""

    kind: str

    def encode(self, item: Any) -> torch.Tensor: ...

    def to_config(self) -> dict: ...


_PREPROCESSORS: dict[str, Callable[[dict], Preprocessor]] = {}


def register_preprocessor(kind: str):
    """Class decorator: make a preprocessor loadable by `preprocessor_from_config`."""

    def wrap(cls):
        cls.kind = kind
        _PREPROCESSORS[kind] = cls.from_config
        return cls

    return wrap


# where each kind registers itself, so a bundle loads without importing everything up front
_MODULES = {"image": "firstepoch.data.images", "tabular": "firstepoch.data.tabular", "text": "firstepoch.data.lm"}


def preprocessor_from_config(config: dict) -> Preprocessor:
    """The preprocessor a bundle's `preprocessing` config describes."""
    kind = config.get("kind")
    if kind not in _PREPROCESSORS and kind in _MODULES:
        importlib.import_module(_MODULES[kind])
    if kind not in _PREPROCESSORS:
        raise FirstEpochError(f"unknown preprocessing kind {kind!r}; known: {', '.join(sorted(_PREPROCESSORS))}")
    return _PREPROCESSORS[kind](config)


@register_preprocessor("tensor")
class TensorPreprocessor:
    """Plain tensors: an item is already the model's input."""

    def __init__(self, shape: Sequence[int] = ()):
        self.shape = list(shape)

    def encode(self, item: Any) -> torch.Tensor:
        x = torch.as_tensor(item, dtype=torch.float32)
        if self.shape and list(x.shape) != self.shape:
            raise FirstEpochError(f"input has shape {list(x.shape)} but the model expects {self.shape}")
        return x

    def to_config(self) -> dict:
        return {"kind": "tensor", "shape": self.shape}

    @classmethod
    def from_config(cls, config: dict) -> "TensorPreprocessor":
        return cls(config.get("shape", []))


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

    # Alternate constructors live next to the data kind they read; imported lazily to keep this file small.
    @classmethod
    def from_tensors(cls, x, y, valid_pct: float = 0.2, seed: int = 42, task: str | None = None,
                     batch_size: int | None = None, x_valid=None, y_valid=None) -> "DataLoaders":
        """Loaders over plain tensors or arrays; float targets mean regression, integer targets classification."""
        return from_tensors(x, y, valid_pct=valid_pct, seed=seed, task=task, batch_size=batch_size,
                            x_valid=x_valid, y_valid=y_valid)

    @classmethod
    def from_folder(cls, path, **kwargs) -> "DataLoaders":
        """Images labelled by sub-folder names (see `firstepoch.data.images.from_folder`)."""
        from firstepoch.data.images import from_folder

        return from_folder(path, **kwargs)

    @classmethod
    def from_name_func(cls, path, files=None, label_func=None, **kwargs) -> "DataLoaders":
        """Images labelled from their file name by a function or regex (see `firstepoch.data.images`)."""
        from firstepoch.data.images import from_name_func

        return from_name_func(path, files, label_func, **kwargs)

    @classmethod
    def from_text(cls, path, **kwargs) -> "DataLoaders":
        """Next-token windows over a text corpus (see `firstepoch.data.lm.from_text`)."""
        from firstepoch.data.lm import from_text

        return from_text(path, **kwargs)

    @classmethod
    def from_csv(cls, path, target: str, **kwargs) -> "DataLoaders":
        """Tabular data from a CSV file with a `target` column (see `firstepoch.data.tabular.from_csv`)."""
        from firstepoch.data.tabular import from_csv

        return from_csv(path, target, **kwargs)


class TensorDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int, num_workers: int = 0,
                with_epoch: bool = False, collate_fn=None) -> DataLoader:
    """A DataLoader over `dataset` whose order comes from an `EpochSampler`."""
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, with_epoch=with_epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                      num_workers=num_workers, collate_fn=collate_fn, persistent_workers=False,
                      # its own generator, so making an iterator never draws from the global RNG
                      # (a resumed run must see the same dropout masks as an uninterrupted one)
                      generator=torch.Generator().manual_seed(seed))


def check_batch_size(batch_size: int | None, n_train: int, n_valid: int, what: str) -> int:
    """The batch size to use; a clear error when the splits are too small for it."""
    if n_train == 0:
        raise FirstEpochError(f"{what}: the training split is empty; add data or lower valid_pct")
    if n_valid == 0:
        raise FirstEpochError(f"{what}: the validation split is empty; raise valid_pct or add a valid/ folder")
    if batch_size is None:  # 64, or small enough to give a small dataset a few steps per epoch
        return max(1, min(DEFAULT_BATCH_SIZE, n_train // 4))
    if batch_size < 1:
        raise FirstEpochError(f"batch size must be at least 1, not {batch_size}")
    if batch_size > n_train:
        raise FirstEpochError(f"{what}: only {n_train} training items but batch size {batch_size}; "
                              f"lower the batch size to {n_train} or less, or add data")
    return batch_size


def split_indices(n: int, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random train/valid split of range(n)."""
    if not 0 < valid_pct < 1:
        raise FirstEpochError(f"valid_pct must be between 0 and 1 (exclusive), not {valid_pct}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_valid = int(round(n * valid_pct))
    return sorted(order[n_valid:]), sorted(order[:n_valid])


def infer_task(y: torch.Tensor) -> str:
    return "regression" if y.is_floating_point() else "classification"


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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
