"""The learning-rate finder: an exponential sweep of the lr over a few batches, as in fastai."""
from __future__ import annotations

import math

import numpy as np

from firstepoch.core.callbacks import Callback, CancelFitException, CancelValidateException


class LRFinder(Callback):
    """Raises the lr from `start_lr` to `end_lr` over `num_it` batches; stops once the loss diverges."""

    order = 1

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, beta: float = 0.98):
        self.start_lr, self.end_lr, self.num_it, self.beta = start_lr, end_lr, num_it, beta
        self.lrs: list[float] = []
        self.smoothed: list[float] = []

    def before_fit(self):
        self.step, self.average, self.best = 0, 0.0, math.inf

    def _lr(self) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (self.step / max(self.num_it - 1, 1))

    def before_batch(self):
        if self.learn.training:
            for group in self.learn.opt.param_groups:
                group["lr"] = self._lr()

    def after_batch(self):
        if not self.learn.training:
            return
        loss = self.learn.loss.item()
        if not math.isfinite(loss):
            raise CancelFitException()
        self.step += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        smooth = self.average / (1 - self.beta ** self.step)
        self.lrs.append(self.learn.opt.param_groups[0]["lr"])
        self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        if smooth > 4 * self.best or self.step >= self.num_it:
            raise CancelFitException()

    def before_validate(self):
        raise CancelValidateException()

    def suggestion(self) -> float:
        """The lr where the smoothed loss falls fastest, before its minimum."""
        if len(self.lrs) < 3:
            return self.lrs[0] if self.lrs else self.start_lr
        losses = np.array(self.smoothed)
        end = int(losses.argmin()) + 1
        if end < 3:
            return self.lrs[0]
        slopes = np.gradient(losses[:end], np.log(self.lrs[:end]))
        return float(self.lrs[int(slopes.argmin())])
