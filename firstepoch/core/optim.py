"""Optimisers and losses by name, and learning-rate schedules as functions of training progress."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from firstepoch.errors import FirstEpochError

# name -> (constructor, default learning rate)
OPTIMIZERS: dict[str, tuple[Callable, float]] = {
    "sgd": (lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd), 1e-2),
    "adam": (lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd), 1e-3),
    "adamw": (lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd), 1e-3),
    "rmsprop": (lambda params, lr, wd: torch.optim.RMSprop(params, lr=lr, weight_decay=wd), 1e-3),
}


def make_optimizer(name: str, params, lr: float | None, wd: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise FirstEpochError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    make, default_lr = OPTIMIZERS[name]
    return make(params, default_lr if lr is None else lr, wd)


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


LOSSES: dict[str, Callable] = {"cross_entropy": F.cross_entropy, "lm_cross_entropy": _lm_cross_entropy, "mse": _mse, "l1": _l1, "mae": _l1,
                               "huber": _huber, "bce": _bce}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse", "language_model": "lm_cross_entropy"}


def get_loss(loss: str | Callable) -> Callable:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise FirstEpochError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)} or pass a function")
    return LOSSES[loss]


def cosine(start: float, end: float, pct: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


def one_cycle(lr_max: float, pct_start: float = 0.25, div: float = 25.0, div_final: float = 1e5):
    """The 1cycle policy: cosine warm-up from lr_max/div to lr_max, then cosine down to lr_max/div_final.

    Returns (lr(pct), momentum(pct)) where pct in [0, 1] is the fraction of training done.
    """

    def lr(pct: float) -> float:
        if pct < pct_start:
            return cosine(lr_max / div, lr_max, pct / pct_start)
        return cosine(lr_max, lr_max / div_final, (pct - pct_start) / (1 - pct_start))

    def momentum(pct: float) -> float:
        if pct < pct_start:
            return cosine(0.95, 0.85, pct / pct_start)
        return cosine(0.85, 0.95, (pct - pct_start) / (1 - pct_start))

    return lr, momentum
