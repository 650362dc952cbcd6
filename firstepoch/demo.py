"""`firstepoch demo`: the whole path on real data bundled with the package, in under two minutes on a laptop.

Handwritten digits (scikit-learn's 1,797 8x8 scans) are written out as an image folder, a small CNN is
trained on it with the epoch table, evaluated on held-out images, used to predict a few files, and
exported as a bundle, with a loss curve and a confusion matrix.
"""
from __future__ import annotations

import random
from pathlib import Path

from rich.console import Console
from rich.table import Table

SIZE, LR = 28, 5e-3


def run_demo(console: Console, epochs: int = 8, out: Path | None = None, device: str | None = None) -> dict:
    """Train, evaluate, predict and export a digits classifier; returns the test metrics."""
    from firstepoch.core.plots import plot_confusion
    from firstepoch.data import DataLoaders, samples
    from firstepoch.loading import load
    from firstepoch.train import train

    folder = samples.digits()
    console.print(f"[bold]data[/bold]  {folder}: 1,797 real handwritten digits (scikit-learn), as PNG files",
                  highlight=False)
    dls = DataLoaders.from_folder(folder / "train", valid_pct=0.2, seed=42, size=SIZE, flip=False, rotate=10.0)
    console.print(f"[bold]train[/bold] a small CNN on {dls.info['n_train']} images, validate on "
                  f"{dls.info['n_valid']}", highlight=False)
    run = train(dls, "cnn", "demo-digits", epochs, LR, device=device, out=out, console=console,
                config={"data": str(folder), "arch": "cnn", "epochs": epochs, "lr": LR})
    if run is None:  # another rank of a distributed run: the first one shows the demo
        return {}
    bundle = Path(run.info()["bundle"])
    predictor = load(bundle, device=device)
    test = predictor.evaluate(folder / "test", metrics=["accuracy", "f1"])
    console.print(f"\n[bold]test[/bold]  {test['n']} held-out images: accuracy {test['accuracy']:.4f}, "
                  f"macro F1 {test['f1']:.4f}", highlight=False)

    files = sorted((folder / "test").glob("*/*.png"))
    picks = random.Random(0).sample(files, 6)
    table = Table("file", "true", "predicted", "probability", title="predictions from the exported bundle")
    for f in picks:
        p = predictor.predict(f)
        mark = "" if p["label"] == f.parent.name else " [red]✗[/red]"
        table.add_row(str(f.relative_to(folder)), f.parent.name, p["label"] + mark, f"{p['probability']:.3f}")
    console.print(table)

    confusion = predictor.confusion(folder / "test")
    plot_confusion(confusion, predictor.classes, run.dir / "confusion.png")
    run.update(bundle=str(bundle), test=test)
    console.print(f"\n[bold green]plots[/bold green] {run.dir / 'loss.png'}, {run.dir / 'confusion.png'}",
                  highlight=False)
    console.print(
        "\n[bold]next[/bold]\n"
        f"  firstepoch predict {bundle} {picks[0]}\n"
        f"  firstepoch evaluate {bundle} {folder / 'test'} --fail-under accuracy=0.95\n"
        "  firstepoch train images YOUR_FOLDER --epochs 5      (one sub-folder per class)\n"
        "  firstepoch runs", highlight=False)
    return test
