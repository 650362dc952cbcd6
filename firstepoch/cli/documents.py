"""The document commands of `firstepoch`: embed, index, search, ask. Thin: parse, call the library, print."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from firstepoch.cli.app import app
from firstepoch.errors import FirstEpochError

console = Console(soft_wrap=True, emoji=False)
_INDEX_HELP = "Index name (kept in firstepoch's data folder) or a folder path."
_STOPWORDS = set("a an and are as at be by for from how in is it of on or the this to was what when where which "
                 "who why with does do did can".split())


@app.command()
def embed(
    texts: List[str] = typer.Argument(..., help="One or more texts."),
    model: Optional[str] = typer.Option(None, help="Embedding model name or sentence-transformers folder "
                                        "(default: the bundled all-minilm-l6-v2)."),
    json_out: bool = typer.Option(False, "--json", help="Print the vectors as JSON."),
):
    """Embed texts with a sentence-embedding model (all-MiniLM-L6-v2 by default, offline)."""
    from firstepoch.retrieval.embed import load_embedder

    embedder = load_embedder(model)
    vectors = embedder.embed(texts)
    if json_out:
        print(json.dumps({"model": embedder.name, "dim": embedder.dim,
                          "embeddings": [[round(float(x), 7) for x in v] for v in vectors]}))
        return
    for text, v in zip(texts, vectors):
        head = ", ".join(f"{x:+.4f}" for x in v[:6])
        console.print(f"{embedder.name} ({embedder.dim} dims) [{head}, ...]  {escape(text[:60])}", highlight=False)


@app.command()
def index(
    docs: Path = typer.Argument(..., help="A folder of documents (.txt .md .rst .pdf .html), or one file."),
    index: str = typer.Option("docs", "--index", help=_INDEX_HELP),
    model: Optional[str] = typer.Option(None, help="Embedding model for a new index (default all-minilm-l6-v2)."),
    rebuild: bool = typer.Option(False, help="Start the index again from nothing (e.g. with another --model)."),
    chunk_tokens: int = typer.Option(200, min=16, help="Chunk size in tokens."),
    overlap: int = typer.Option(32, min=0, help="Tokens shared by consecutive chunks."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="List every file with its status."),
):
    """Index a folder of documents for `search` and `ask`; again later, it updates only what changed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from firstepoch.retrieval.index import Index, document_files

    files = document_files(docs)  # one listing, for the progress bar and the run
    if overlap >= chunk_tokens:
        raise FirstEpochError(f"--overlap {overlap} must be smaller than --chunk-tokens {chunk_tokens}")
    if rebuild:
        Index.remove(index)
    with Index.open(index, model=model, create=True) as ix, Progress(
            TextColumn("[bold]indexing[/bold]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("files", total=len(files))
        chunks = bar.add_task("chunks embedded", total=0, visible=False)

        def read(f):
            bar.update(task, advance=f.status != "removed", description=f"files  {f.path}")
            if f.chunks:  # the second bar: a big PDF's chunks, as they are embedded
                bar.update(chunks, total=bar.tasks[chunks].total + f.chunks, visible=True)

        report = ix.add(docs, chunk_tokens=chunk_tokens, overlap=overlap, files=files, progress=read,
                        embedded=lambda n: bar.update(chunks, advance=n))
        info = ix.info()
    counts = {s: report.count(s) for s in ("indexed", "unchanged", "removed", "no text", "unreadable", "skipped")}
    console.print("  ".join(f"{n} {s}" for s, n in counts.items() if n) or "no files", highlight=False)
    table = Table("file", "status", "chunks", "detail", box=None)
    for f in report.files:
        if verbose or f.status in ("no text", "unreadable", "skipped", "removed"):
            table.add_row(escape(f.path), f.status, str(f.chunks) if f.status == "indexed" else "", escape(f.detail))
    if table.row_count:
        console.print(table)
    console.print(f"[bold green]index[/bold green] {info['path']}: {info['chunks']:,} chunks from "
                  f"{info['files'].get('indexed', 0):,} files ({info['model']}); {report.chunks_added:,} chunks "
                  f"embedded in {report.seconds:.1f}s", highlight=False)


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for, in plain words."),
    index: str = typer.Option("docs", "--index", help=_INDEX_HELP),
    k: int = typer.Option(5, "-k", min=1, help="How many results."),
    mode: str = typer.Option("hybrid", help="hybrid (vector + BM25), vector or lexical."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
):
    """Search an index: the best matching passages with score, source, page and a highlighted snippet."""
    from firstepoch.retrieval.index import Index

    with Index.open(index) as ix:
        hits = ix.search(query, k=k, mode=mode)
    if json_out:
        print(json.dumps([{"rank": r + 1, "score": round(h.score, 4), "source": h.source, "page": h.page,
                           "section": h.section, "start": h.start, "end": h.end, "text": h.text}
                          for r, h in enumerate(hits)]))
        return
    if not hits:
        console.print("no matches")
    for rank, hit in enumerate(hits, 1):
        section = f"  [dim]{escape(hit.section)}[/dim]" if hit.section else ""
        console.print(f"[bold]{rank}.[/bold] [cyan]{escape(hit.where)}[/cyan]  score {hit.score:.3f}{section}",
                      highlight=False)
        console.print("   " + highlight(snippet(hit.text, query), query), highlight=False)


@app.command()
def ask(
    question: str = typer.Argument(..., help="Your question."),
    index: str = typer.Option("docs", "--index", help=_INDEX_HELP),
    model: Optional[str] = typer.Option(None, help="The LLM that answers (default: the bundled "
                                        "SmolLM2-135M-Instruct)."),
    k: int = typer.Option(5, "-k", min=1, help="Passages to retrieve."),
    max_tokens: int = typer.Option(200, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0: the same answer every time."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
):
    """Answer a question from an index's documents, with numbered citations to source and page."""
    from firstepoch.retrieval.index import Index

    with Index.open(index) as ix:
        answer = ix.ask(question, model=model, k=k, stream=True, max_tokens=max_tokens, temperature=temperature)
        if json_out:
            result = answer.result()
            print(json.dumps({"question": question, "answer": result.text, "answered": result.answered,
                              "supported": result.supported, "best": result.best,
                              "quote": result.quote.to_json() if result.quote else None,
                              "citations": [{"number": c.number, "source": c.source, "page": c.page,
                                             "section": c.section, "score": round(c.score, 4)}
                                            for c in result.citations]}))
            return
        for piece in answer:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    if answer.quote is not None:
        lead = ("the sources say" if answer.supported else
                "[yellow]not supported by the sources, which say[/yellow]")
        console.print(f"{lead}: {escape(str(answer.quote))}", highlight=False)
    for c in answer.citations:
        section = f" ({escape(c.section)})" if c.section else ""
        console.print(f"[bold][{c.number}][/bold] {escape(c.where)}{section}  (score {c.score:.2f})", highlight=False)


# ------------------------------------------------------------------------------------------ snippets


def _terms(query: str) -> list[str]:
    return [w for w in dict.fromkeys(re.findall(r"\w+", query.lower())) if w not in _STOPWORDS and len(w) > 1]


def snippet(text: str, query: str, width: int = 240) -> str:
    """The `width` characters of `text` around where the query's words cluster, on one line."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    terms = _terms(query)
    hits = [m.start() for t in terms for m in re.finditer(rf"\b{re.escape(t[:6])}", flat, re.IGNORECASE)]
    if not hits:
        return flat[:width] + " ..."
    best = max(hits, key=lambda at: sum(at <= h < at + width for h in hits))  # the window with most matches
    start = max(0, min(best - width // 4, len(flat) - width))
    return ("... " if start else "") + flat[start:start + width] + (" ..." if start + width < len(flat) else "")


def highlight(text: str, query: str) -> str:
    """Rich markup with the query's words (and their inflections) in bold."""
    terms = _terms(query)
    if not terms:
        return escape(text)
    pattern = re.compile(r"\b(" + "|".join(re.escape(t[:6]) for t in terms) + r")\w*", re.IGNORECASE)
    out, at = [], 0
    for m in pattern.finditer(text):
        out += [escape(text[at:m.start()]), f"[bold yellow]{escape(m.group(0))}[/bold yellow]"]
        at = m.end()
    return "".join(out) + escape(text[at:])
