"""Callbacks: every training feature is one. The loop in `learner.py` only fires events.

Events, in order: before_fit, before_epoch, before_train, before_batch, after_pred, after_loss,
before_backward, after_backward, before_step, after_step, after_batch, after_train, before_validate,
after_validate, after_epoch, after_fit; plus after_cancel_{fit,epoch,train,validate,batch,step}.
A callback cancels part of the loop by raising the matching `Cancel*Exception`.
"""
from __future__ import annotations

import math
import signal
import threading
import time

import torch

from firstepoch.errors import FirstEpochError

EVENTS = tuple(
    f"{when}_{what}" for what in ("fit", "epoch", "train", "batch", "step", "validate")
    for when in ("before", "after", "after_cancel")
) + ("after_pred", "after_loss", "before_backward", "after_backward")


class CancelFitException(Exception): ...
class CancelEpochException(Exception): ...
class CancelTrainException(Exception): ...
class CancelValidateException(Exception): ...
class CancelBatchException(Exception): ...
class CancelStepException(Exception): ...


class TrainingInterrupted(Exception):
    """Raised by `fit` after Ctrl-C or SIGTERM, once the last checkpoint is written."""


class Callback:
    """Base class: define any of the event methods; `self.learn` is the Learner.

    `order` sorts callbacks (lower runs first). `state_dict`/`load_state_dict` let a callback's state
    travel in checkpoints so a resumed run continues exactly.
    """

    order = 0
    learn = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class NaNGuard(Callback):
    """Stops at the first non-finite training loss, naming the step and suggesting a lower lr."""

    order = 10

    def after_loss(self):
        learn = self.learn
        if learn.training and not math.isfinite(learn.loss.item()):
            lr = learn.opt.param_groups[0]["lr"]
            raise FirstEpochError(
                f"training loss became {learn.loss.item()} at epoch {learn.epoch + 1}, batch {learn.iter + 1} "
                f"(step {learn.train_iter + 1}, lr {lr:.3g}); try a lower learning rate, e.g. {lr / 10:.1g}, "
                f"or gradient clipping")


class GradientClip(Callback):
    """Clips the gradient norm to `max_norm` after each backward pass."""

    order = 20

    def __init__(self, max_norm: float = 1.0):
        self.max_norm = max_norm

    def after_backward(self):
        scaler = getattr(self.learn, "scaler", None)
        if scaler is not None:
            scaler.unscale_(self.learn.opt)
        torch.nn.utils.clip_grad_norm_(self.learn.model.parameters(), self.max_norm)


class GradientAccumulation(Callback):
    """Steps the optimizer every `n` batches, averaging their gradients: an n-times larger batch."""

    order = 5

    def __init__(self, n: int = 2):
        if n < 1:
            raise FirstEpochError(f"gradient accumulation needs n >= 1, not {n}")
        self.n = n

    def after_loss(self):
        if self.learn.training:
            self.learn.loss_grad = self.learn.loss_grad / self.n

    def before_step(self):
        if (self.learn.iter + 1) % self.n != 0 and self.learn.iter + 1 != self.learn.n_iter:
            raise CancelStepException()


class MixedPrecision(Callback):
    """Autocast to bf16/fp16 where the device supports it; fp16 gets a gradient scaler."""

    order = 8

    def __init__(self, dtype: torch.dtype | None = None):
        self.dtype = dtype
        self.scaler = None
        self._ctx = None

    def before_fit(self):
        from firstepoch.core.device import autocast_dtype

        device = self.learn.device
        self.active_dtype = self.dtype or autocast_dtype(device)
        if self.active_dtype is None:
            import warnings

            warnings.warn(f"mixed precision is not supported on {device}; training in fp32", stacklevel=2)
            return
        if self.active_dtype == torch.float16 and self.scaler is None:
            self.scaler = torch.amp.GradScaler(device.type)
        self.learn.scaler = self.scaler

    def before_batch(self):
        if self.active_dtype is not None:
            self._ctx = torch.autocast(self.learn.device.type, dtype=self.active_dtype)
            self._ctx.__enter__()

    def _exit(self):
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def after_loss(self):
        self._exit()

    def after_cancel_batch(self):
        self._exit()

    def before_backward(self):
        if self.scaler is not None:
            self.learn.loss_grad = self.scaler.scale(self.learn.loss_grad)

    def before_step(self):
        if self.scaler is not None:
            self.scaler.step(self.learn.opt)
            self.scaler.update()
            self.learn.opt.zero_grad(set_to_none=True)
            raise CancelStepException()

    def after_fit(self):
        self.learn.scaler = None

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if "scaler" in state:
            self.scaler = torch.amp.GradScaler(self.learn.device.type)
            self.scaler.load_state_dict(state["scaler"])


class ParamScheduler(Callback):
    """Sets lr (and momentum) before each batch from functions of the fraction of training done."""

    order = 1

    def __init__(self, lr_fn, momentum_fn=None):
        self.lr_fn, self.momentum_fn = lr_fn, momentum_fn

    def before_batch(self):
        if not self.learn.training:
            return
        pct = self.learn.progress()
        for group in self.learn.opt.param_groups:
            group["lr"] = self.lr_fn(pct) * group.get("lr_scale", 1.0)  # discriminative lrs: see Learner.fine_tune
            if self.momentum_fn is not None:
                if "betas" in group:
                    group["betas"] = (self.momentum_fn(pct), group["betas"][1])
                elif "momentum" in group and group["momentum"]:
                    group["momentum"] = self.momentum_fn(pct)


class TimeBudget(Callback):
    """Trains for `seconds` of wall clock ("the best model you can get in 3 minutes").

    Schedules follow the elapsed fraction of the budget instead of the step count; when the time is up
    the current epoch's training stops, its validation still runs, and the fit ends. The clock starts
    after the first training step, so one-time start-up (`torch.compile`, first allocations) is not charged.
    Runs after the recorder and the checkpoint (order 60), so the last, shortened epoch is logged and saved too.
    """

    order = 60

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise FirstEpochError(f"a time budget must be positive, not {seconds}")
        self.seconds = seconds

    def before_fit(self):
        self.start, self.done = None, False
        self.learn.progress_fn = self.elapsed_fraction

    def elapsed_fraction(self) -> float:
        if self.start is None:
            return 0.0
        return min(1.0, (time.perf_counter() - self.start) / self.seconds)

    def after_batch(self):
        if not self.learn.training:
            return
        if self.start is None:
            self.start = time.perf_counter()
        if self.elapsed_fraction() >= 1.0:
            self.done = True
            raise CancelTrainException()

    def after_epoch(self):
        if self.done:
            self.learn.stop_reason = f"time budget of {self.seconds:g} s used"
            raise CancelFitException()

    def after_fit(self):
        self.learn.progress_fn = None


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved by `min_delta` for `patience` epochs."""

    order = 60

    def __init__(self, monitor: str = "valid_loss", patience: int = 3, min_delta: float = 0.0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best, self.wait = None, 0

    def before_fit(self):
        self.higher_is_better = self.learn.recorder.higher_is_better(self.monitor)

    def after_epoch(self):
        value = self.learn.recorder.history[-1].get(self.monitor)
        if value is None:
            raise FirstEpochError(f"early stopping monitors {self.monitor!r} but the run records only "
                                  f"{', '.join(self.learn.recorder.history[-1])}")
        sign = 1 if self.higher_is_better else -1
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.learn.stop_reason = f"early stopping: {self.monitor} did not improve for {self.patience} epochs"
            raise CancelFitException()

    def state_dict(self):
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state):
        self.best, self.wait = state["best"], state["wait"]


class Interrupt(Callback):
    """Turns Ctrl-C / SIGTERM into a clean stop at the end of the current batch (checkpoint kept)."""

    order = 90

    def before_fit(self):
        self.requested = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def _stop(self):
        self.learn.stop_reason = f"interrupted by {self.requested}"
        self.learn.interrupted = True
        raise CancelFitException()

    def after_batch(self):
        if self.requested and self.learn.training:
            self._stop()

    def after_epoch(self):
        if self.requested:
            self._stop()

    def after_fit(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class RecalibrateBatchNorm(Callback):
    """Each training epoch, every BatchNorm layer's running statistics start again and become the plain
    average of that epoch's batch statistics (PyTorch's cumulative average, `momentum=None`), so validation
    sees statistics of this data only, at no extra cost: no second pass over the images.

    Fine-tuning needs it: after few steps the momentum-averaged statistics still carry the pretraining data's,
    and a model that fits its training batches well predicts a single class in evaluation mode (seen on a
    64-document PDF set: 94% with batch statistics, 50% with the running ones).
    """

    order = 5

    def before_train(self):
        self._momentum = {}
        for module in self.learn.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                self._momentum[module] = module.momentum
                module.reset_running_stats()
                module.momentum = None

    def after_train(self):
        for module, momentum in self._momentum.items():
            module.momentum = momentum
        self._momentum = {}
