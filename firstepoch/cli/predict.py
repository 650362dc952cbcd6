"""`firstepoch predict` and `evaluate`: a bundle (or a pretrained ImageNet model) on your files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from firstepoch.bundle import read_config
from firstepoch.cli.app import app, console
from firstepoch.errors import FirstEpochError


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
        read_config(bundle)  # a bundle, or one line saying what is wrong with it
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
    read_config(bundle)  # a bundle, or one line saying what is wrong with it
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
