"""A `Run` is one training run's folder: run.json, metrics.jsonl, checkpoints/, plots, the final bundle."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from firstepoch.core.io import write_json
from firstepoch.errors import FirstEpochError

DEFAULT_ROOT = "runs"


def runs_root() -> Path:
    return Path(os.environ.get("FIRSTEPOCH_RUNS", DEFAULT_ROOT))


@dataclass
class Run:
    """A run folder. `Run.create("runs", task="images")` makes `runs/images-20261124-101500/`."""

    dir: Path

    @classmethod
    def create(cls, root: str | Path | None = None, name: str | None = None, task: str = "run",
               config: dict | None = None) -> "Run":
        root = Path(root) if root is not None else runs_root()
        auto = name is None
        name = name or f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = root / name, 1
        while auto and path.exists():  # never reuse an auto-named run; a named one is resumed
            n += 1
            path = root / f"{name}-{n}"
        run = cls(path)
        path.mkdir(parents=True, exist_ok=True)
        if not run.info_file.exists():
            write_json({"name": path.name, "task": task, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "status": "created", "config": config or {}}, run.info_file)
        return run

    @property
    def info_file(self) -> Path:
        return self.dir / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def bundle_dir(self) -> Path:
        return self.dir / "model"

    def info(self) -> dict:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return {"name": self.dir.name, "status": "unreadable"}

    def update(self, **fields) -> None:
        write_json({**self.info(), **fields}, self.info_file)

    def history(self) -> list[dict]:
        """The rows of metrics.jsonl, one an epoch (a line cut short by a crash is left out)."""
        if not self.metrics_file.is_file():
            return []
        rows = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    @staticmethod
    def best_of(history: list[dict]) -> dict:
        """The best value of the run's first metric (or of valid_loss when it has none)."""
        if not history:
            return {}
        from firstepoch.core.metrics import get_metric

        def is_metric(name: str) -> bool:
            try:
                get_metric(name)
            except FirstEpochError:
                return False
            return True

        key = next((k for k in history[-1] if is_metric(k)), "valid_loss")
        lower_better = key == "valid_loss" or not get_metric(key).higher_is_better
        values = [row[key] for row in history if row.get(key) is not None]
        if not values:
            return {}
        return {key: min(values) if lower_better else max(values)}


def list_runs(root: str | Path | None = None) -> list[dict]:
    """Every run under `root` (default `runs/`), newest first, with its path."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []
    rows = []
    for info_file in root.glob("*/run.json"):
        info = Run(info_file.parent).info()
        info["path"] = str(info_file.parent)
        rows.append(info)
    return sorted(rows, key=lambda r: r.get("created", ""), reverse=True)
