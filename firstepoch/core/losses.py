"""Losses by name: what `Learner(loss=...)` takes, and the default for each task."""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F

from firstepoch.errors import FirstEpochError


def _mse(pred, target):
    return F.mse_loss(pred.view_as(target), target)


def _l1(pred, target):
    return F.l1_loss(pred.view_as(target), target)


def _huber(pred, target):
    return F.smooth_l1_loss(pred.view_as(target), target)


def _bce(pred, target):
    return F.binary_cross_entropy_with_logits(pred.view_as(target), target.float())


def _lm_cross_entropy(logits, targets):
    """Next-token cross-entropy: logits (B, T, V) against token ids (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# the one table of losses by name
LOSSES: dict[str, Callable] = {"cross_entropy": F.cross_entropy, "lm_cross_entropy": _lm_cross_entropy, "mse": _mse,
                               "l1": _l1, "mae": _l1, "huber": _huber, "bce": _bce}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse", "language_model": "lm_cross_entropy"}


def get_loss(loss: str | Callable) -> Callable:
    """A loss function by name from `LOSSES` (a function is itself)."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise FirstEpochError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)} or pass a function")
    return LOSSES[loss]
