"""`firstepoch serve`: models and indexes behind OpenAI- and Ollama-compatible APIs and a web page."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from firstepoch.cli.app import app, console


@app.command()
def serve(
    models: Optional[List[str]] = typer.Argument(None, help="What to serve: bundled names, GGUF files, model "
                                                 "folders, bundles; NAME=PATH picks the name. Default: the bundled "
                                                 "chat and embedding models."),
    index: Optional[List[str]] = typer.Option(None, "--index", help="A document index to serve (repeatable)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, min=1, max=65535),
    api_key: Optional[str] = typer.Option(None, envvar="FIRSTEPOCH_API_KEY", help="Require 'Authorization: "
                                          "Bearer KEY' on every route."),
    cors: Optional[List[str]] = typer.Option(None, help="Allow browser calls from this origin (repeatable)."),
    allow_host: Optional[List[str]] = typer.Option(None, help="Another Host name to answer to, e.g. a reverse "
                                                   "proxy's (repeatable); loopback names and --host always are."),
    queue: int = typer.Option(16, min=1, help="Requests that may wait for a busy model before 503."),
    context: int = typer.Option(4096, min=64, help="Context length to allocate for each LLM."),
    parallel: Optional[int] = typer.Option(None, min=1, max=64, help="Requests a GGUF model decodes together "
                                           "(continuous batching; each holds a KV cache of --context positions). "
                                           "Default: 4 on 2 cores or more, fewer where memory is short."),
    timeout: float = typer.Option(600.0, min=1.0, help="The longest one request may run (seconds)."),
    chat_template: Optional[Path] = typer.Option(None, help="A Jinja chat template file overriding the chat "
                                                 "models' own (its tool-call syntax too)."),
    kv_cache: str = typer.Option("f16", help="The LLMs' KV cache numbers: f16 (as llama.cpp), or q8_0 (about "
                                 "half the memory again: more --parallel slots fit)."),
):
    """Serve models over OpenAI- and Ollama-compatible HTTP APIs, with a web page at /."""
    from firstepoch.serve import Limits
    from firstepoch.serve import serve as run_server

    limits = Limits(queue_size=queue, total_timeout=timeout)
    run_server(list(models or []), list(index or []), host=host, port=port, api_key=api_key, cors=cors,
               limits=limits, context=context, allow_hosts=list(allow_host or []), parallel=parallel,
               chat_template=chat_template, kv_cache=kv_cache,
               ready=lambda url: console.print(f"[bold green]serving[/bold green] {url}  (web page at {url}/, "
                                               f"OpenAI API at {url}/v1, Ollama API at {url}/api)",
                                               highlight=False))
