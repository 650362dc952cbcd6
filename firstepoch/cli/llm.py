"""`firstepoch generate`, `chat`, `models`, `quantize`, `perplexity` and `export` (a GPT to GGUF)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from firstepoch.cli.app import app, console
from firstepoch.errors import FirstEpochError


_MODEL_HELP = "A model: a name from `firstepoch models`, a .gguf file, a Hugging Face folder or a GPT bundle."


def _sampling_options(temperature, top_k, top_p, min_p, repeat_penalty, seed, stop) -> dict:
    return {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
            "repetition_penalty": repeat_penalty, "seed": seed, "stop": list(stop or [])}


_KV_HELP = "The KV cache's numbers: f16 (as llama.cpp), or q8_0 (about half the memory again)."


def _load_llm(model, context, chat_template, kv_cache: str = "f16"):
    import firstepoch.llm

    lm = firstepoch.llm.load(model, context=context, chat_template=Path(chat_template) if chat_template else None)
    if kv_cache != "f16":
        if getattr(lm, "kind", "llm") != "llm" or not hasattr(lm, "set_kv_cache"):
            raise FirstEpochError(f"{model}: --kv-cache applies to LLMs")
        lm.set_kv_cache(kv_cache)
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
    kv_cache: str = typer.Option("f16", help=_KV_HELP),
):
    """Continue a text with a language model, streamed token by token; speeds are printed at the end."""
    lm = _load_llm(model, context, None, kv_cache)
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
    kv_cache: str = typer.Option("f16", help=_KV_HELP),
):
    """Chat with a local LLM in the terminal (/clear forgets the conversation, /exit or Ctrl-D leaves)."""
    lm = _load_llm(model, context, chat_template, kv_cache)
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
    from firstepoch.paths import home

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
    to: str = typer.Option(..., "--to", help="Q4_K_M (about 4.9 bits a weight), Q5_K_M (5.7), Q6_K (6.6), Q8_0 "
                                             "(8.5, also q8) or Q4_1 (5, also q4): llama.cpp's mixtures."),
):
    """Re-quantize a GGUF model as llama.cpp's quantizer would; compare them with `firstepoch perplexity`."""
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
    from firstepoch.bundle import read_config
    from firstepoch.llm.gguf import export_gguf

    task = read_config(bundle)["task"]  # a bundle, or one line saying what is wrong with it
    if task != "language_model":
        raise FirstEpochError(f"{bundle}: only GPT bundles export to GGUF; this one is a {task} model")
    lm = firstepoch.load(bundle, device="cpu")
    path = export_gguf(lm, gguf, name=bundle.resolve().parent.name)
    size = path.stat().st_size / 2**20
    console.print(f"[bold green]wrote[/bold green] {path} ({size:.1f} MiB)\n"
                  f"  llama.cpp: llama-cli -m {path} -p 'ROMEO:' -n 200 --temp 0.8\n"
                  f"  Ollama:    echo 'FROM {path.resolve()}' > Modelfile && ollama create mygpt -f Modelfile",
                  highlight=False)
