"""What a run shows and keeps: the Recorder (losses, metrics, history), the epoch table, the metrics log."""
from __future__ import annotations

import json
import sys
import time

import torch

from firstepoch.core.callbacks import Callback
from firstepoch.core.io import atomic_open
from firstepoch.core.metrics import Metric


class Recorder(Callback):
    """Keeps every training-batch loss and one history row per epoch (train/valid loss, metrics, time)."""

    order = -10

    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics
        self.history: list[dict] = []
        self.losses: list[float] = []  # every training batch, in order
        self._partial: list[float] = []  # losses of an epoch cut short by an interrupt, restored on resume
        self.last_valid: dict = {}

    def higher_is_better(self, name: str) -> bool:
        for m in self.metrics:
            if m.name == name:
                return m.higher_is_better
        return False  # losses

    def before_epoch(self):
        self._epoch_losses: list[torch.Tensor] = []
        self._start = time.perf_counter()

    def after_batch(self):
        learn = self.learn
        if learn.training:
            self._epoch_losses.append(learn.loss)
            return
        n = len(learn.yb)
        self._valid_sum += learn.loss.float() * n
        self._valid_n += n
        for m in self.metrics:
            m.accumulate(learn.pred.float(), learn.yb)

    def after_train(self):
        self._train_seconds = time.perf_counter() - self._start
        done = torch.stack(self._epoch_losses).float().cpu().tolist() if self._epoch_losses else []
        self._epoch_losses = []
        self._partial += done
        self.losses += done

    def before_validate(self):
        self._valid_sum, self._valid_n = 0.0, 0
        for m in self.metrics:
            m.reset()

    def after_validate(self):
        self.last_valid = {"valid_loss": float(self._valid_sum / max(self._valid_n, 1))}
        self.last_valid.update({m.name: m.value for m in self.metrics})

    def after_epoch(self):
        learn = self.learn
        losses, self._partial = self._partial, []
        row = {"epoch": learn.epoch + 1, "train_loss": sum(losses) / max(len(losses), 1), **self.last_valid}
        if learn.dls.task == "language_model":  # a GPT's epoch is a span of steps: say where and how fast
            tokens = len(losses) * learn.dls.batch_size * learn.dls.input_shape[0] * learn.world_size
            row.update(step=learn.train_iter, tokens_per_s=round(tokens / max(self._train_seconds, 1e-9)))
        row["time"] = round(time.perf_counter() - self._start, 2)
        self.history.append(row)

    def after_cancel_fit(self):
        self.after_train()  # keep the losses of a cut-short epoch for the checkpoint

    def state_dict(self) -> dict:
        return {"history": self.history, "losses": self.losses, "partial": self._partial}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.losses, self._partial = state["history"], state["losses"], state["partial"]


def _format(value) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _format_time(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


class ProgressCallback(Callback):
    """A Rich progress bar with ETA per pass (in a terminal) and one epoch-table row per epoch."""

    order = 40

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(file=sys.stdout)
        self._bar = None

    def before_fit(self):
        self._header_printed = False
        self.enabled = self.learn.is_main
        self.live = self.enabled and self.console.is_terminal

    def _start(self, total: int, label: str):
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                             TimeRemainingColumn(), console=self.console, transient=True)
        self._task = self._bar.add_task(label, total=total, loss="")
        self._bar.start()

    def _stop(self):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def before_train(self):
        learn = self.learn
        of = f"{learn.progress():.0%} of the time" if learn.progress_fn else f"/{learn.n_epochs}"
        self._start(learn.n_iter, f"epoch {learn.epoch + 1}{' (' + of + ')' if learn.progress_fn else of}")
        self._count = 0

    def before_validate(self):
        if getattr(self.learn, "fitting", False):
            self._start(self.learn.n_iter, "validating")

    def after_batch(self):
        if self._bar is not None:
            self._count += 1
            # reading the loss syncs the device, so only every few batches
            fields = {"loss": f"loss {self.learn.loss.item():.4f}"} if self._count % 10 == 1 else {}
            self._bar.update(self._task, advance=1, **fields)

    def after_train(self):
        self._stop()

    def after_validate(self):
        self._stop()

    def after_cancel_fit(self):
        self._stop()

    def after_epoch(self):
        if not self.enabled:
            return
        row = dict(self.learn.recorder.history[-1])
        row["time"] = _format_time(row["time"])
        cells = [_format(v) for v in row.values()]
        widths = [max(len(k), len(c)) for k, c in zip(row, cells)]
        if not self._header_printed:
            self.console.print("  ".join(k.ljust(w) for k, w in zip(row, widths)), style="bold", highlight=False)
            self._header_printed = True
        self.console.print("  ".join(c.ljust(w) for c, w in zip(cells, widths)), highlight=False)


class MetricsLog(Callback):
    """Writes `metrics.jsonl` (one line per epoch), `run.json` (status) and `loss.png` into the run folder."""

    order = 50

    def __init__(self, run):
        self.run = run

    def before_fit(self):
        if self.learn.is_main:
            self.run.update(status="training", epochs=self.learn.n_epochs)

    def after_epoch(self):
        if not self.learn.is_main:
            return
        history = self.learn.recorder.history
        with atomic_open(self.run.metrics_file, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in history)
        self.run.update(epochs_done=len(history), last=history[-1], best=self.run.best_of(history))

    def after_fit(self):
        if not self.learn.is_main:
            return
        learn = self.learn
        status = "failed" if learn.failed else "interrupted" if learn.interrupted else "done"
        self.run.update(status=status, stop_reason=learn.stop_reason)
        from firstepoch.core.plots import plot_losses

        plot_losses(self.learn.recorder, self.run.dir / "loss.png")
