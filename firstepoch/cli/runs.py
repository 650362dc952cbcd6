"""`firstepoch runs` and `demo`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from firstepoch.cli.app import app, console


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
