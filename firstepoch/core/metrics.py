"""Metrics accumulated over a whole pass (not averaged per batch), registered by name."""
from __future__ import annotations

import re

import torch

from firstepoch.errors import FirstEpochError


class Metric:
    """Accumulates over batches; `value` is the metric over everything seen since `reset`."""

    name: str = "metric"
    higher_is_better: bool = True

    def reset(self) -> None:
        raise NotImplementedError

    def accumulate(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    @property
    def value(self) -> float:
        raise NotImplementedError


class _Counted(Metric):
    """Sum of a per-sample quantity divided by the number of samples."""

    def reset(self):
        self.total, self.count = 0.0, 0

    def per_sample(self, pred, target) -> torch.Tensor:
        raise NotImplementedError

    def accumulate(self, pred, target):
        values = self.per_sample(pred.detach(), target)
        self.total += values.double().sum()
        self.count += values.numel()

    @property
    def value(self) -> float:
        return float(self.total / max(self.count, 1))


class Accuracy(_Counted):
    name = "accuracy"

    def per_sample(self, pred, target):
        return (pred.argmax(dim=-1) == target).float()


class ErrorRate(Accuracy):
    name = "error_rate"
    higher_is_better = False

    @property
    def value(self) -> float:
        return 1.0 - super().value


class TopKAccuracy(_Counted):
    def __init__(self, k: int = 5):
        self.k = k
        self.name = f"top{k}_accuracy"

    def per_sample(self, pred, target):
        k = min(self.k, pred.shape[-1])
        return (pred.topk(k, dim=-1).indices == target.unsqueeze(-1)).any(dim=-1).float()


def confusion_matrix(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Counts (n_classes, n_classes) of each (true class, predicted class) pair; rows are the true class."""
    n = outputs.shape[-1]
    return torch.bincount(targets * n + outputs.detach().argmax(dim=-1), minlength=n * n).view(n, n)


class F1(Metric):
    """Macro-averaged F1 over the classes that appear in targets or predictions."""

    name = "f1"

    def reset(self):
        self.confusion = None

    def accumulate(self, pred, target):
        counts = confusion_matrix(pred, target)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    @property
    def value(self) -> float:
        c = self.confusion.double()
        tp, actual, predicted = c.diag(), c.sum(1), c.sum(0)
        present = (actual + predicted) > 0
        f1 = 2 * tp / (actual + predicted).clamp(min=1)
        return float(f1[present].mean()) if present.any() else 0.0


def _flat(pred, target):
    return pred.detach().reshape(target.shape).float(), target.float()


class RMSE(_Counted):
    name = "rmse"
    higher_is_better = False

    def per_sample(self, pred, target):
        p, t = _flat(pred, target)
        return (p - t) ** 2

    @property
    def value(self) -> float:
        return super().value ** 0.5


class MAE(_Counted):
    name = "mae"
    higher_is_better = False

    def per_sample(self, pred, target):
        p, t = _flat(pred, target)
        return (p - t).abs()


class Perplexity(_Counted):
    """exp of the mean next-token cross-entropy over every token seen."""

    name = "perplexity"
    higher_is_better = False

    def per_sample(self, pred, target):
        return torch.nn.functional.cross_entropy(pred.flatten(0, 1).float(), target.flatten(), reduction="none")

    @property
    def value(self) -> float:
        return float(torch.exp(torch.tensor(super().value)))


METRICS = {"accuracy": Accuracy, "perplexity": Perplexity, "error_rate": ErrorRate, "f1": F1, "rmse": RMSE, "mae": MAE,
           "top_k_accuracy": TopKAccuracy}
DEFAULT_METRICS = {"classification": ["accuracy"], "regression": ["rmse"], "language_model": ["perplexity"]}


def get_metric(metric: str | Metric) -> Metric:
    """A metric by name ("accuracy", "error_rate", "f1", "top5_accuracy", "rmse", "mae") or as given."""
    if isinstance(metric, Metric):
        return metric
    if match := re.fullmatch(r"top_?(\d+)_accuracy", metric):
        return TopKAccuracy(int(match.group(1)))
    if metric not in METRICS:
        raise FirstEpochError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)} or topK_accuracy")
    return METRICS[metric]()
