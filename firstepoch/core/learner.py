"""The `Learner`: model + data + loss + optimizer + metrics + callbacks, and the loop that fires events.

The loop only moves data, calls the model, the loss, backward and the optimizer; everything else
(progress, logging, checkpoints, schedules, mixed precision, early stopping) is a callback.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from firstepoch.core.callbacks import (Callback, CancelBatchException, CancelEpochException, CancelFitException,
                                       CancelStepException, CancelTrainException, CancelValidateException,
                                       EVENTS, GradientAccumulation, GradientClip, Interrupt, MixedPrecision,
                                       NaNGuard, ParamScheduler, RecalibrateBatchNorm, TrainingInterrupted)
from firstepoch.core.checkpoint import Checkpoint, clean_state_dict, load_checkpoint, save_checkpoint
from firstepoch.core.device import (CompiledForward, default_device, is_out_of_memory, rng_state, seed_everything,
                                    set_rng_state)
from firstepoch.core.metrics import DEFAULT_METRICS, Metric, get_metric
from firstepoch.core.losses import DEFAULT_LOSS, get_loss
from firstepoch.core.optim import make_optimizer, muon_groups, one_cycle
from firstepoch.core.recorder import MetricsLog, ProgressCallback, Recorder
from firstepoch.core.runs import Run
from firstepoch.data.loaders import DataLoaders
from firstepoch.errors import FirstEpochError

PRECISIONS = {"fp32": None, "mixed": "auto", "bf16": torch.bfloat16, "fp16": torch.float16}


class Learner:
    """Trains `model` on `dls`.

    Args:
        dls: the data (`DataLoaders`).
        model: an `nn.Module`, or an architecture name ("linear", "mlp", "cnn", any timm name).
        loss: a loss name ("cross_entropy", "mse", ...) or function; default from the task.
        opt: optimizer name: "sgd" (momentum 0.9), "adam", "adamw", "rmsprop", or "muon" (Muon for the hidden
            matrices, AdamW for the rest: see `firstepoch.core.optim.Muon`).
        lr: learning rate; default per optimizer (1e-3 for the Adam family, 1e-2 for SGD).
        wd: weight decay.
        metrics: names or `Metric`s; default accuracy (classification) or rmse (regression).
        callbacks: extra callbacks (e.g. `EarlyStopping()`, `GradientClip(1.0)`).
        device: "cpu", "cuda", "mps"; default the best available.
        run: a `Run` or a folder path: writes metrics.jsonl, loss.png and a checkpoint every epoch.
        seed: seeds model initialisation and everything random.
        precision: "fp32", "mixed" (bf16/fp16 where the device supports it), "bf16" or "fp16".
        compile: `torch.compile` the model, falling back with one warning where it can't.
        progress: show the progress bar and the epoch table.
        clip: clip gradients to this norm. accumulate: step every N batches.
        deterministic: use deterministic GPU kernels, so a GPU run repeats bit for bit (CPU runs always do).
    """

    def __init__(self, dls: DataLoaders, model: nn.Module | str = "cnn", loss: str | Callable | None = None,
                 opt: str = "adamw", lr: float | None = None, wd: float = 0.01,
                 metrics: Iterable[str | Metric] | None = None, callbacks: Iterable[Callback] = (),
                 device: str | None = None, run: Run | str | Path | None = None, seed: int = 42,
                 precision: str = "fp32", compile: bool = False, progress: bool = True,
                 clip: float | None = None, accumulate: int = 1, deterministic: bool = False):
        self.dls, self.seed = dls, seed
        self.device = default_device(device)
        self.rank, self.world_size = _setup_distributed(self.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        seed_everything(seed, deterministic)
        if isinstance(model, str):
            from firstepoch.models import create_model

            model = create_model(model, dls.input_shape, dls.n_out)
        self.model = model.to(self.device)
        self.loss_func = get_loss(loss or DEFAULT_LOSS[dls.task])
        self.opt_name, self.lr, self.wd = opt, lr, wd
        self.opt = make_optimizer(opt, muon_groups(self.model) if opt == "muon" else self.model.parameters(), lr, wd)
        metrics = DEFAULT_METRICS[dls.task] if metrics is None else metrics
        self.recorder = Recorder([get_metric(m) for m in metrics])
        self.run = Run.create(Path(run).parent, Path(run).name) if isinstance(run, (str, Path)) else run
        if precision not in PRECISIONS:
            raise FirstEpochError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        self.precision = precision

        self.callbacks: list[Callback] = []
        defaults: list[Callback] = [self.recorder, NaNGuard(), Interrupt()]
        if progress:
            defaults.append(ProgressCallback())
        if self.run is not None:
            defaults += [MetricsLog(self.run), Checkpoint(self.run.checkpoint)]
        if PRECISIONS[precision] is not None:
            defaults.append(MixedPrecision(None if precision == "mixed" else PRECISIONS[precision]))
        if clip:
            defaults.append(GradientClip(clip))
        if accumulate > 1:
            defaults.append(GradientAccumulation(accumulate))
        for cb in [*defaults, *callbacks]:
            self.add_callback(cb)

        self._train_model: nn.Module = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_model = DistributedDataParallel(self.model, device_ids=ids)
            self.dls.train.sampler.shard(self.rank, self.world_size)
        self._compiled = CompiledForward(compile)
        self.epoch = self.iter = self.train_iter = 0
        self.resume_point = (0, 0)
        self.training = self.fitting = False
        self.scaler = None
        self.progress_fn: Callable[[], float] | None = None  # set by a TimeBudget

    def progress(self) -> float:
        """The fraction of training done, in [0, 1]: by steps, or by wall clock under a time budget."""
        if self.progress_fn is not None:
            return self.progress_fn()
        return self.train_iter / max(self.total_iters, 1)

    # ----------------------------------------------------------------------------------- callbacks
    def add_callback(self, cb: Callback) -> None:
        cb.learn = self
        self.callbacks.append(cb)

    def remove_callback(self, cb: Callback) -> None:
        self.callbacks.remove(cb)

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes (rank 0 of a distributed run)."""
        return self.rank == 0

    def _prepare_events(self, skip: tuple[type, ...] = ()) -> None:
        active = sorted((cb for cb in self.callbacks if not isinstance(cb, skip)), key=lambda cb: cb.order)
        self._handlers = {e: [getattr(cb, e) for cb in active if hasattr(cb, e)] for e in EVENTS}

    def _fire(self, event: str) -> None:
        for handler in self._handlers[event]:
            handler()

    def _with_events(self, f: Callable[[], None], name: str, cancel: type[Exception]) -> None:
        try:
            self._fire(f"before_{name}")
            f()
        except cancel:
            self._fire(f"after_cancel_{name}")
        self._fire(f"after_{name}")

    # ----------------------------------------------------------------------------------- the loop
    @classmethod
    def for_images(cls, dls: DataLoaders, arch: str = "efficientnet_lite0", pretrained: bool = True,
                   weights: str | Path | None = None, **kwargs) -> "Learner":
        """A Learner on a timm image model: with pretrained weights and a new head for the data's classes
        (EfficientNet-Lite0's ImageNet weights work offline; `weights` takes your own file), or from
        scratch with `pretrained=False`. Then `fine_tune(epochs)`."""
        from firstepoch.models.vision import image_model

        return cls(dls, image_model(dls, arch, pretrained, weights), **kwargs)

    def fit(self, epochs: int, lr: float | None = None, resume: bool | str | Path = False,
            callbacks: Iterable[Callback] = ()) -> list[dict]:
        """Train for `epochs` epochs at a constant learning rate; returns the epoch history.

        `resume=True` continues from the run's last checkpoint (or from the checkpoint path given),
        exactly where it stopped: call it with the same arguments as the interrupted `fit`.
        """
        if lr is not None:
            self.lr = lr
            for group in self.opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        return self._fit(epochs, list(callbacks), resume=resume)

    def fit_one_cycle(self, epochs: int, lr_max: float | None = None, resume: bool | str | Path = False,
                      pct_start: float = 0.25, callbacks: Iterable[Callback] = ()) -> list[dict]:
        """Train with the 1cycle policy (warm-up to `lr_max`, then cosine annealing); see `fit`."""
        lr_max = lr_max or self.lr or self.opt.defaults["lr"]
        lr_fn, momentum_fn = one_cycle(lr_max, pct_start=pct_start)
        return self._fit(epochs, [ParamScheduler(lr_fn, momentum_fn), *callbacks], resume=resume)

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1, lr_mult: float = 100.0,
                  callbacks: Iterable[Callback] = ()) -> list[dict]:
        """fastai's recipe for a pretrained model: train the new head with the body frozen for `freeze_epochs`
        (BatchNorm layers keep training, and their statistics restart each epoch from the new data's batches),
        then train everything for `epochs` with a 1cycle schedule and discriminative learning rates: the body's
        `lr_mult` times smaller than the head's `base_lr / 2`. Returns the epoch history (both phases)."""
        callbacks = [RecalibrateBatchNorm(), *callbacks]
        if freeze_epochs > 0:
            self.freeze()
            self.fit_one_cycle(freeze_epochs, base_lr, pct_start=0.99, callbacks=callbacks)
        self.unfreeze(body_lr_scale=1 / lr_mult)
        return self.fit_one_cycle(epochs, base_lr / 2, pct_start=0.3, callbacks=callbacks)

    def _split(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(body, head) parameters: the head is the model's classifier (timm's `get_classifier`) or last layer."""
        model = self.model
        head_module = model.get_classifier() if hasattr(model, "get_classifier") else list(model.children())[-1]
        head_ids = {id(p) for p in head_module.parameters()}
        params = list(self.model.parameters())
        return [p for p in params if id(p) not in head_ids], [p for p in params if id(p) in head_ids]

    def _regroup(self, body_lr_scale: float) -> None:
        if self.opt_name == "muon":
            raise FirstEpochError("freezing and discriminative learning rates work with adamw, adam, sgd or rmsprop, "
                                  "not muon; fine-tune with opt='adamw'")
        body, head = self._split()
        groups = [{"params": body, "lr_scale": body_lr_scale}, {"params": head, "lr_scale": 1.0}]
        self.opt = make_optimizer(self.opt_name, groups, self.lr, self.wd)

    def freeze(self) -> None:
        """Train only the head (and every BatchNorm layer); the body's lr is a tenth of the head's."""
        if self.world_size > 1:
            raise FirstEpochError("fine-tuning with a frozen body is not supported under torchrun yet; train on "
                                  "one process, or use --freeze-epochs 0")
        norm_params = {id(p) for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       for p in m.parameters()}
        body, _ = self._split()
        for p in body:
            p.requires_grad_(id(p) in norm_params)
        self._regroup(0.1)

    def unfreeze(self, body_lr_scale: float = 1.0) -> None:
        """Train every parameter; the body's learning rate is `body_lr_scale` times the head's."""
        for p in self.model.parameters():
            p.requires_grad_(True)
        self._regroup(body_lr_scale)

    def _fit(self, epochs: int, extra: list[Callback], resume=False, skip: tuple[type, ...] = ()) -> list[dict]:
        for cb in extra:
            self.add_callback(cb)
        self._prepare_events(skip)
        self.n_epochs, self.interrupted, self.failed, self.stop_reason = epochs, False, False, None
        self.iters_per_epoch = self.dls.train.sampler.per_rank // self.dls.train.batch_size
        self.total_iters = epochs * self.iters_per_epoch
        start_epoch, skip_batches = 0, 0
        self.train_iter = 0  # each fit runs its own schedule from the start (fine_tune's two phases, say)
        if resume:
            start_epoch, skip_batches = self._restore(resume)
        self.fitting = True
        try:
            try:
                self._fire("before_fit")
                for self.epoch in range(start_epoch, epochs):
                    self._skip_batches, skip_batches = skip_batches, 0
                    self._with_events(self._do_epoch, "epoch", CancelEpochException)
            except CancelFitException:
                self._fire("after_cancel_fit")
            except BaseException as exc:
                self.failed = True
                if is_out_of_memory(exc):
                    raise self._out_of_memory(exc) from exc
                raise
            finally:
                self.fitting = False
                self.training = False
                self._fire("after_fit")  # always: restores signal handlers, closes bars, records status
        finally:
            for cb in extra:
                self.remove_callback(cb)
        if self.interrupted:
            where = f"; resume with fit(..., resume=True) from {self.run.checkpoint}" if self.run else ""
            raise TrainingInterrupted(f"{self.stop_reason} at epoch {self.resume_point[0] + 1}, "
                                      f"batch {self.resume_point[1]}{where}")
        return self.recorder.history

    def _do_epoch(self) -> None:
        self.model.train()
        self.training, self.dl, self.n_iter = True, self.dls.train, self.iters_per_epoch
        self._with_events(self._do_train, "train", CancelTrainException)
        self._validate(self.dls.valid)
        self.resume_point = (self.epoch + 1, 0)

    def _do_train(self) -> None:
        self.dl.sampler.set_epoch(self.epoch, skip=self._skip_batches * self.dl.batch_size)
        for self.iter, batch in enumerate(self.dl, start=self._skip_batches):
            self._one_batch(batch)

    def _validate(self, dl) -> None:
        self.model.eval()
        self.training, self.dl, self.n_iter = False, dl, len(dl)
        self._with_events(self._do_validate, "validate", CancelValidateException)

    def _do_validate(self) -> None:
        dl = self.dl
        with torch.no_grad():
            for self.iter, batch in enumerate(dl):
                self._one_batch(batch)

    def _one_batch(self, batch) -> None:
        self.xb, self.yb = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        self._with_events(self._do_one_batch, "batch", CancelBatchException)

    def _do_one_batch(self) -> None:
        self.pred = self._forward(self.xb)
        self._fire("after_pred")
        self.loss_grad = self.loss_func(self.pred, self.yb)
        self.loss = self.loss_grad.detach()
        self._fire("after_loss")
        if not self.training:
            return
        self._fire("before_backward")
        self.loss_grad.backward()
        self._fire("after_backward")
        self._with_events(self._step, "step", CancelStepException)
        self.train_iter += 1
        self.resume_point = (self.epoch, self.iter + 1)

    def _step(self) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled(self._train_model if self.training else self.model, x)

    def _out_of_memory(self, exc: Exception) -> FirstEpochError:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        shape = tuple(self.xb.shape) if hasattr(self, "xb") else ()
        return FirstEpochError(
            f"out of memory on {self.device} with batch size {self.dls.batch_size} (input batch {shape}); "
            f"lower the batch size (--batch-size {max(1, self.dls.batch_size // 2)}), the image size (--size), "
            f"or use mixed precision (--precision mixed)")

    # ------------------------------------------------------------------------- evaluate / predict
    def evaluate(self, dl=None) -> dict:
        """Loss and metrics over `dl` (default: the validation set), e.g. {"valid_loss": .., "accuracy": ..}."""
        self._prepare_events()
        self._validate(dl or self.dls.valid)
        return dict(self.recorder.last_valid)

    def predictor(self):
        """A `Predictor` over the current model: what `export` then `firstepoch.load` gives back for a classifier
        or regressor."""
        from firstepoch.predictor import Predictor

        return Predictor(self.model, self.dls.preprocessor, self.dls.task, self.dls.classes, self.device)

    def predict(self, item):
        """Predict one raw item (an image file, a CSV row as a dict, a tensor); see `Predictor.predict`."""
        return self.predictor().predict(item)

    # ---------------------------------------------------------------------------- lr finder
    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                plot: str | Path | None = None) -> float:
        """Sweep the learning rate exponentially for `num_it` batches; return a suggested lr.

        Model and optimizer are restored afterwards. Writes a plot to `plot` (or the run folder).
        """
        from firstepoch.core.lr_finder import LRFinder
        from firstepoch.core.plots import plot_lr_find

        saved = copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()), rng_state()
        finder = LRFinder(start_lr, end_lr, num_it)
        epochs = math.ceil(num_it / max(self.dls.train.sampler.per_rank // self.dls.train.batch_size, 1))
        history = copy.deepcopy(self.recorder.state_dict())
        try:
            self._fit(epochs, [finder], skip=(NaNGuard, MetricsLog, Checkpoint, ProgressCallback, ParamScheduler))
        finally:
            self.model.load_state_dict(saved[0])
            self.opt.load_state_dict(saved[1])
            set_rng_state(saved[2])
            self.recorder.load_state_dict(history)
            self.train_iter, self.resume_point = 0, (0, 0)
        suggestion = finder.suggestion()
        if plot or self.run:
            plot_lr_find(finder.lrs, finder.smoothed, suggestion, Path(plot or self.run.dir / "lr_find.png"))
        return suggestion

    # ---------------------------------------------------------------------------- save / load / export
    def save(self, path: str | Path, with_opt: bool = True) -> Path:
        """Write a checkpoint (model, optimizer, RNG states, position, callback states) atomically."""
        state = {"model": clean_state_dict(self.model.state_dict()),
                 "epoch": self.resume_point[0], "iter": self.resume_point[1], "train_iter": self.train_iter,
                 "rng": rng_state(), "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks}}
        if with_opt:
            state["opt"] = self.opt.state_dict()
        save_checkpoint(state, path)
        return Path(path)

    def load(self, path: str | Path, with_opt: bool = True) -> "Learner":
        """Load a checkpoint's weights (and optimizer state); keys from compiled/DDP/GPU models are fine."""
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(clean_state_dict(state["model"]))
        except RuntimeError as exc:
            raise FirstEpochError(f"{path}: the checkpoint does not fit this model "
                                  f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})")
        if with_opt and "opt" in state:
            self.opt.load_state_dict(state["opt"])
        return self

    def _restore(self, resume) -> tuple[int, int]:
        if resume is True:
            if self.run is None:
                raise FirstEpochError("resume=True needs a run folder (Learner(..., run=...)) or a checkpoint path")
            resume = self.run.checkpoint
        path = Path(resume)
        if not path.exists():
            raise FirstEpochError(f"{path}: no checkpoint to resume from; train without --resume first")
        state = load_checkpoint(path)
        if "rng" not in state:
            raise FirstEpochError(f"{path}: holds weights only, not a training state to resume from")
        self.load(path)
        by_name = {cb.name: cb for cb in self.callbacks}
        for name, cb_state in state.get("callbacks", {}).items():
            if name in by_name:
                by_name[name].load_state_dict(cb_state)
        self.train_iter = state["train_iter"]
        self.resume_point = (state["epoch"], state["iter"])
        set_rng_state(state["rng"])
        return state["epoch"], state["iter"]

    def export(self, path: str | Path | None = None, metrics: dict | None = None) -> Path:
        """Write a bundle (model.safetensors + firstepoch.json) that `firstepoch.load` turns into a predictor."""
        from firstepoch.bundle import save_bundle

        if path is None:
            if self.run is None:
                raise FirstEpochError("export needs a path (or a Learner with a run folder)")
            path = self.run.bundle_dir
        if metrics is None:
            metrics = {k: v for k, v in (self.recorder.history[-1] if self.recorder.history else {}).items()
                       if k not in ("epoch", "time")}
        return save_bundle(path, self.model, self.dls, metrics=metrics,
                           training={"epochs": len(self.recorder.history), "optimizer": self.opt_name,
                                     "seed": self.seed, "loss": getattr(self.loss_func, "__name__", "custom"),
                                     "metrics": [m.name for m in self.recorder.metrics]})


def _setup_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size): starts the process group when launched by torchrun with more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()
