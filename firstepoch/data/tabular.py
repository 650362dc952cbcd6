"""Tabular data from a CSV file: numeric columns standardised, categorical ones one-hot, fitted on train only.

One encoder (`TabularPreprocessor`) turns rows into vectors for training, for `predict` on a dict and in a
saved bundle, so all three give the same numbers.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import math
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import torch

from firstepoch.data.core import TensorDataset, check_batch_size, make_loader, split_indices
from firstepoch.errors import FirstEpochError

MAX_LEVELS = 50
OTHER = "<other>"


def _number(value) -> float | None:
    """float(value), or None when it is missing or not a number."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        x = float(text)
    except ValueError:
        return None
    return None if math.isnan(x) else x


def _missing(value) -> bool:
    return value is None or str(value).strip() == "" or (isinstance(value, float) and math.isnan(value))


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV file with a header, as dicts of strings; comma, semicolon or tab separated."""
    path = Path(path)
    if not path.is_file():
        raise FirstEpochError(f"{path}: no such CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FirstEpochError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise FirstEpochError(f"{path}: empty file; expected a header row and data rows")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(lines, dialect)
    header = [h.strip() for h in next(reader)]
    rows = []
    for line_no, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise FirstEpochError(f"{path}, line {line_no}: {len(fields)} fields but the header has {len(header)}; "
                                  f"fix that row (a stray separator or quote?)")
        rows.append(dict(zip(header, fields)))
    if not rows:
        raise FirstEpochError(f"{path}: no data rows under the header")
    return rows


class TabularPreprocessor:
    """Encodes rows into float vectors with statistics fitted on the training rows.

    Numeric columns: (x - mean) / std, missing values filled with the median plus a `<col>_missing` flag when
    the column had gaps in training. Categorical columns: one-hot over the most frequent training levels
    (at most 50), with one `<other>` slot for rare, unseen and missing values.
    """

    kind, takes_files = "tabular", False

    def __init__(self, target: str, numeric: dict, categorical: dict):
        self.target, self.numeric, self.categorical = target, numeric, categorical
        self.features = []
        for col, s in numeric.items():
            self.features.append(col)
            if s["flag"]:
                self.features.append(f"{col}_missing")
        for col, levels in categorical.items():
            self.features += [f"{col}={level}" for level in levels]

    @classmethod
    def fit(cls, rows: list[dict], target: str, numeric: Sequence[str], categorical: Sequence[str]):
        stats = {}
        for col in numeric:
            values = [v for v in (_number(r.get(col)) for r in rows) if v is not None]
            t = torch.tensor(values or [0.0], dtype=torch.float64)
            std = float(t.std()) if len(values) > 1 else 1.0
            stats[col] = {"mean": float(t.mean()), "std": std if std > 0 else 1.0, "median": float(t.median()),
                          "flag": len(values) < len(rows)}
        vocab = {}
        for col in categorical:
            counts = Counter(str(r.get(col, "")).strip() for r in rows if not _missing(r.get(col)))
            vocab[col] = [level for level, _ in counts.most_common(MAX_LEVELS)] + [OTHER]
        return cls(target, stats, vocab)

    def encode(self, row: dict) -> torch.Tensor:
        out = []
        for col, s in self.numeric.items():
            x = _number(row.get(col))
            if x is None and not _missing(row.get(col)):
                raise FirstEpochError(f"column {col!r}: {row.get(col)!r} is not a number")
            out.append(((s["median"] if x is None else x) - s["mean"]) / s["std"])
            if s["flag"]:
                out.append(1.0 if x is None else 0.0)
        for col, levels in self.categorical.items():
            value = row.get(col)
            value = OTHER if _missing(value) else str(value).strip()
            hot = levels.index(value) if value in levels else len(levels) - 1
            out += [1.0 if i == hot else 0.0 for i in range(len(levels))]
        return torch.tensor(out, dtype=torch.float32)

    def encode_rows(self, rows: list[dict]) -> torch.Tensor:
        return torch.stack([self.encode(r) for r in rows]) if rows else torch.zeros(0, len(self.features))

    def to_config(self) -> dict:
        return {"kind": "tabular", "target": self.target, "numeric": self.numeric, "categorical": self.categorical}

    @classmethod
    def from_config(cls, config: dict) -> "TabularPreprocessor":
        return cls(config["target"], config["numeric"], config["categorical"])

    def read_items(self, path: Path) -> Iterator[tuple[str, dict]]:
        """Each row of a CSV, named `file:row`."""
        for i, row in enumerate(read_rows(path), start=1):
            yield f"{path}:{i}", row

    def read_labelled(self, path: Path, classes: list[str] | None, task: str) -> tuple[list[dict], torch.Tensor]:
        """The rows of a CSV that have a value in the target column, and those values as targets."""
        target = self.target
        rows = [r for r in read_rows(path) if str(r.get(target, "")).strip() != ""]
        if not rows:
            raise FirstEpochError(f"{path}: no rows with a value in the target column {target!r}")
        if task == "classification":
            index = {c: i for i, c in enumerate(classes or [])}
            if unknown := sorted({r[target] for r in rows} - set(index)):
                raise FirstEpochError(f"{path}: {target!r} has values {unknown[:5]} this model does not know")
            return rows, torch.tensor([index[r[target]] for r in rows])
        try:
            return rows, torch.tensor([float(r[target]) for r in rows])
        except ValueError as exc:
            raise FirstEpochError(f"{path}: the target column {target!r} must be numeric ({exc})") from exc


def _sort_classes(values: set[str]) -> list[str]:
    numbers = {v: _number(v) for v in values}
    if all(n is not None for n in numbers.values()):
        return sorted(values, key=lambda v: numbers[v])
    return sorted(values)


def infer_task(values: list[str]) -> str:
    """Classification for text targets or a few integer values (at most 10), else regression."""
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return "classification"
    if all(n == int(n) for n in numbers) and len(set(numbers)) <= 10:
        return "classification"
    return "regression"


def csv_parts(path, target: str, valid_pct: float = 0.2, seed: int = 42, task: str | None = None,
             batch_size: int | None = None, categorical: Sequence[str] | None = None,
             numeric: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> dict:
    """The fields of `DataLoaders.from_csv`: tabular data from a CSV with a header row, predicting the column `target`.

    Args:
        task: "classification" or "regression"; inferred from the target's values when None.
        categorical, numeric: force these columns' kinds (default: numeric when every value parses).
        exclude: columns to leave out (ids, leaky columns).
    """
    path = Path(path)
    rows = read_rows(path)
    columns = list(rows[0])
    if target not in columns:
        close = difflib.get_close_matches(target, columns, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FirstEpochError(f"{path}: no column {target!r} (columns: {', '.join(columns)}){hint}")
    kept = [r for r in rows if not _missing(r[target])]
    features = [c for c in columns if c != target and c not in set(exclude)]
    if not features:
        raise FirstEpochError(f"{path}: no feature columns left besides the target {target!r}")
    forced_cat, forced_num = set(categorical or ()), set(numeric or ())
    num_cols = [c for c in features if c in forced_num or (c not in forced_cat and
                all(_missing(r[c]) or _number(r[c]) is not None for r in kept))]
    cat_cols = [c for c in features if c not in num_cols]
    task = task or infer_task([r[target] for r in kept])
    if task not in ("classification", "regression"):
        raise FirstEpochError(f"task must be 'classification' or 'regression', not {task!r}")

    train_idx, valid_idx = split_indices(len(kept), valid_pct, seed)
    train_rows, valid_rows = [kept[i] for i in train_idx], [kept[i] for i in valid_idx]
    bs = check_batch_size(batch_size, len(train_rows), len(valid_rows), str(path))
    pre = TabularPreprocessor.fit(train_rows, target, num_cols, cat_cols)
    if task == "classification":
        classes = _sort_classes({r[target].strip() for r in kept})
        if len(classes) < 2:
            raise FirstEpochError(f"{path}: the target {target!r} has a single value ({classes[0]!r}); "
                                  f"a classifier needs at least two classes")
        index = {c: i for i, c in enumerate(classes)}
        targets = lambda rs: torch.tensor([index[r[target].strip()] for r in rs])  # noqa: E731
    else:
        classes = None
        if bad := next((r[target] for r in kept if _number(r[target]) is None), None):
            raise FirstEpochError(f"{path}: regression needs a numeric target column {target!r}, found {bad!r}")
        targets = lambda rs: torch.tensor([_number(r[target]) for r in rs], dtype=torch.float32)  # noqa: E731
    loaders = [make_loader(TensorDataset(pre.encode_rows(rs), targets(rs)), bs, train=train, seed=seed)
               for rs, train in ((train_rows, True), (valid_rows, False))]
    return dict(train=loaders[0], valid=loaders[1], task=task, preprocessor=pre,
                input_shape=[len(pre.features)], n_out=len(classes) if classes else 1, classes=classes,
                fingerprint=hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                info={"n_train": len(train_rows), "n_valid": len(valid_rows), "target": target,
                      "dropped_rows": len(rows) - len(kept), "features": pre.features, "source": str(path)})
