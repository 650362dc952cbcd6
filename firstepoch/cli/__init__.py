"""The `firstepoch` command. Thin: each command parses its arguments, calls the library and prints; one module a
command group, registered on the Typer app in the order `firstepoch --help` lists them."""
from __future__ import annotations

import sys
import warnings

# each registers its commands, in this order
from firstepoch.cli import training, llm, predict, runs, documents, serve  # noqa: F401
from firstepoch.cli.app import app
from firstepoch.core.callbacks import TrainingInterrupted
from firstepoch.errors import FirstEpochError


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
