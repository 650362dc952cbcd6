"""`firstepoch train images|tabular|text`: parse, then call `firstepoch.train`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from firstepoch.cli.app import console, train_app
from firstepoch.errors import FirstEpochError


@train_app.command("images")
def train_images(
    folder: Path = typer.Argument(..., help="Image folder: one sub-folder per class, or train/ + valid/ (+ test/)."),
    arch: Optional[str] = typer.Option(None, help="cnn, mlp, linear, or any timm architecture name (default: "
                                       "the bundled pretrained efficientnet_lite0, fine-tuned)."),
    pretrained: bool = typer.Option(True, help="Start a timm architecture from pretrained weights and fine-tune."),
    weights: Optional[Path] = typer.Option(None, help="Your own backbone weights (.safetensors, .pth) to start from."),
    freeze_epochs: int = typer.Option(1, min=0, help="Fine-tuning: epochs of training the new head alone first."),
    epochs: int = typer.Option(5, min=1),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (1cycle); default 3e-3 (2e-3 fine-tuning)."),
    batch_size: Optional[int] = typer.Option(None, help="Default: 64 (or fewer when the data is small)."),
    size: Optional[int] = typer.Option(None, min=8, help="Images are resized to SIZE x SIZE (default 64; 128 for "
                                       "a pretrained backbone)."),
    valid_pct: float = typer.Option(0.2, help="Fraction held out for validation when there is no valid/ folder."),
    test_pct: float = typer.Option(0.0, min=0.0, max=0.9, help="Fraction held out as a test set, never seen in "
                                   "training; reported at the end."),
    page: int = typer.Option(1, min=1, help="The page of each PDF to use."),
    seed: int = typer.Option(42),
    label_regex: Optional[str] = typer.Option(None, help="Take labels from file names: first group of this regex."),
    labels: Optional[Path] = typer.Option(None, help="Take labels from a CSV of file,label rows."),
    flip: bool = typer.Option(True, help="Random horizontal flips while training."),
    opt: str = typer.Option("adamw", help="sgd, adam, adamw or rmsprop."),
    precision: str = typer.Option("fp32", help="fp32, mixed, bf16 or fp16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, mps (default: the best available)."),
    compile: bool = typer.Option(False, help="torch.compile the model (falls back with a warning)."),
    name: Optional[str] = typer.Option(None, help="Run name under runs/ (default: images-<time>)."),
    resume: bool = typer.Option(False, help="Continue the run named by --name from its last checkpoint."),
    out: Optional[Path] = typer.Option(None, help="Where to write the bundle (default: <run>/model)."),
):
    """Train an image classifier on a folder of images (by default: fine-tune a pretrained EfficientNet-Lite0)."""
    from firstepoch import train

    train.train_images(folder, arch, pretrained, weights, freeze_epochs, epochs, lr, batch_size, size, valid_pct,
                       test_pct, page, seed, label_regex, labels, flip, opt, precision, device, compile, name, resume,
                       out, console=console)


@train_app.command("tabular")
def train_tabular(
    csv: Path = typer.Argument(..., help="A CSV file with a header row."),
    target: str = typer.Option(..., help="The column to predict."),
    task: Optional[str] = typer.Option(None, help="classification or regression (default: inferred)."),
    arch: str = typer.Option("mlp", help="mlp or linear."),
    epochs: int = typer.Option(10, min=1),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (1cycle); default 1e-2."),
    batch_size: Optional[int] = typer.Option(None),
    valid_pct: float = typer.Option(0.2),
    seed: int = typer.Option(42),
    opt: str = typer.Option("adamw"),
    device: Optional[str] = typer.Option(None),
    name: Optional[str] = typer.Option(None, help="Run name under runs/ (default: tabular-<time>)."),
    resume: bool = typer.Option(False, help="Continue the run named by --name from its last checkpoint."),
    out: Optional[Path] = typer.Option(None),
):
    """Train a model on a CSV file to predict one column."""
    from firstepoch import train

    train.train_tabular(csv, target, task, arch, epochs, lr, batch_size, valid_pct, seed, opt, device, name, resume,
                        out, console=console)


@train_app.command("text")
def train_text(
    corpus: Optional[Path] = typer.Argument(None, help="A .txt/.md file or a folder of them."),
    sample: Optional[str] = typer.Option(None, help="Train on a bundled corpus instead: shakespeare."),
    preset: str = typer.Option("tiny", help="Model size: tiny (4x128), small (6x384) or base (12x768)."),
    layers: Optional[int] = typer.Option(None, help="Override the preset's number of layers."),
    heads: Optional[int] = typer.Option(None, help="Override the preset's attention heads."),
    dim: Optional[int] = typer.Option(None, help="Override the preset's width."),
    context: int = typer.Option(64, min=2, help="Tokens the model sees at once."),
    tokenizer: str = typer.Option("char", help="char or bpe."),
    vocab_size: int = typer.Option(1024, help="BPE vocabulary size."),
    steps: int = typer.Option(2000, min=1, help="Training steps in all."),
    time_budget: Optional[str] = typer.Option(None, "--time", help="Train for this wall-clock time instead of "
                                              "--steps, e.g. 90s, 3m, 1h; the lr schedule fits the budget."),
    eval_every: int = typer.Option(250, min=1, help="Steps between validation passes (one table row each)."),
    # batch 24, Muon at lr 3e-3: what trains best in a short wall clock on 2 cores (benchmarks/gpt_vs_nanogpt.py)
    batch_size: int = typer.Option(24, min=1),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (1cycle); default 3e-3 with muon (whose "
                                       "matrices take 6 times it), 1.5e-3 with adamw."),
    opt: str = typer.Option("muon", help="muon (Muon for the hidden matrices, AdamW for the rest) or adamw."),
    seed: int = typer.Option(42),
    precision: str = typer.Option("fp32", help="fp32, mixed, bf16 or fp16."),
    device: Optional[str] = typer.Option(None),
    compile: bool = typer.Option(False),
    name: Optional[str] = typer.Option(None, help="Run name under runs/ (default: text-<time>)."),
    resume: bool = typer.Option(False, help="Continue the run named by --name from its last checkpoint."),
    out: Optional[Path] = typer.Option(None, help="Where to write the bundle (default: <run>/model)."),
):
    """Train your own GPT on a text corpus."""
    from firstepoch import train

    budget = _parse_duration(time_budget) if time_budget else None
    train.train_text(corpus, sample, preset, layers, heads, dim, context, tokenizer, vocab_size, steps, budget,
                     eval_every, batch_size, lr, opt, seed, precision, device, compile, name, resume, out,
                     console=console)


def _parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "3m", "1.5h"."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise FirstEpochError(f"--time {text!r}: expected a duration such as 90s, 3m or 1h") from None
    if seconds <= 0:
        raise FirstEpochError(f"--time {text!r}: the budget must be positive")
    return seconds
