"""What every kind of data shares: the seeded sampler, the loader, splits and batch sizes, the `Preprocessor`
protocol and the tensor preprocessor.

Every loader draws its order from an `EpochSampler`, a pure function of (seed, epoch), so a run resumed
from a checkpoint, or one shard of a distributed run, sees exactly the batches it would have seen.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Iterator, Protocol, Sequence

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
    """Turns one raw item (a file, a CSV row, a tensor) into the model's input tensor, and back to JSON.

    `kind` names it in a bundle's config; `takes_files` says an item is an image or PDF file (an upload), not a
    row or a tensor. `read_items` and `read_labelled` read the items a file or folder holds, for `predict` and
    `evaluate`."""

    kind: ClassVar[str]
    takes_files: ClassVar[bool]

    def encode(self, item: Any) -> torch.Tensor: ...

    def to_config(self) -> dict: ...

    def read_items(self, path: Path) -> Iterator[tuple[str, Any]]:
        """(name, raw item) pairs of a file: an image file is one item, a CSV one item a row."""
        ...

    def read_labelled(self, path: Path, classes: list[str] | None, task: str) -> tuple[list, torch.Tensor]:
        """(raw items, targets in the model's class order) of labelled data."""
        ...


def not_from_files(kind: str, path: Path, what: str) -> FirstEpochError:
    """The error for a preprocessor whose items do not come from files (tensors, text windows)."""
    return FirstEpochError(f"{path}: a model trained on {kind} data cannot {what} files; use it from Python "
                           f"(firstepoch.load(bundle).predict(tensor), or Learner.evaluate on a DataLoader)")


class TensorPreprocessor:
    """Plain tensors: an item is already the model's input."""

    kind, takes_files = "tensor", False

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

    def read_items(self, path: Path) -> Iterator[tuple[str, Any]]:
        raise not_from_files("tensor", path, "predict from")

    def read_labelled(self, path: Path, classes, task) -> tuple[list, torch.Tensor]:
        raise not_from_files("tensor", path, "be evaluated on")


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
