"""Real sample data that ships with the dependencies, so everything works offline."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def home() -> Path:
    """firstepoch's data folder: $FIRSTEPOCH_HOME, else ~/.cache/firstepoch."""
    return Path(os.environ.get("FIRSTEPOCH_HOME") or Path.home() / ".cache" / "firstepoch")


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
