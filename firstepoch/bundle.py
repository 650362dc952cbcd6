"""Bundles: a folder with `model.safetensors` + `firstepoch.json`, written atomically, never a pickle.

`save_bundle` is what `Learner.export` calls; `read_bundle` gives back the config, the model and its
preprocessor without any training code: the JSON holds the architecture spec, the preprocessing, the classes
and the provenance. `firstepoch.load` turns them into a `Predictor` or a `LanguageModel` by the bundle's task.
"""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from firstepoch.core.io import write_json
from firstepoch.data.core import Preprocessor
from firstepoch.data.loaders import preprocessor_from_config
from firstepoch.errors import FirstEpochError

FORMAT = "firstepoch.bundle"
CONFIG_FILE = "firstepoch.json"
WEIGHTS_FILE = "model.safetensors"


def _versions() -> dict:
    from firstepoch.version import __version__

    return {"firstepoch": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_bundle(path: str | Path, model: nn.Module, dls, metrics: dict | None = None,
                training: dict | None = None) -> Path:
    """Write `model` and what the data knows into the bundle folder `path`, replacing it atomically."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise FirstEpochError("export needs a model made by firstepoch.models (linear, mlp, cnn or a timm name), "
                              "which records its architecture; for your own nn.Module use learn.save(path)")
    config = {
        "format": FORMAT, "version": 1, "task": dls.task, "model": spec, "classes": dls.classes,
        "input_shape": list(dls.input_shape), "preprocessing": dls.preprocessor.to_config(),
        "metrics": metrics or {}, "training": training or {},
        "data": {"fingerprint": dls.fingerprint, **{k: v for k, v in dls.info.items() if _jsonable(v)}},
        "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        write_json(config, tmp / CONFIG_FILE)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{time.time_ns()}")
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def read_config(path: str | Path) -> dict:
    """The bundle's `firstepoch.json`, checked; a clear error for anything that is not a bundle."""
    path = Path(path)
    if not path.exists():
        raise FirstEpochError(f"{path}: no such bundle folder")
    config_file = path / CONFIG_FILE
    if not path.is_dir() or not config_file.is_file():
        raise FirstEpochError(f"{path}: not a firstepoch bundle (expected a folder with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}, as written by learn.export or firstepoch train)")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise FirstEpochError(f"{config_file}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise FirstEpochError(f"{config_file}: not a firstepoch bundle config (format should be {FORMAT!r})")
    if not (path / WEIGHTS_FILE).is_file():
        raise FirstEpochError(f"{path}: the bundle has no {WEIGHTS_FILE}; export it again")
    return config


def is_bundle(path: Path) -> bool:
    """A folder holding a firstepoch.json: a bundle (checked in full by `read_config`)."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_bundle(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict, nn.Module, Preprocessor]:
    """(config, model with its weights on `device` in eval mode, preprocessor) of a bundle folder: weights via
    safetensors, no pickle, no training code."""
    from firstepoch.models import build

    path = Path(path)
    config = read_config(path)
    model = build(config["model"])
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    except Exception as exc:
        raise FirstEpochError(f"{path / WEIGHTS_FILE}: cannot load the weights ({str(exc).splitlines()[0][:200]})")
    if missing or unexpected:
        raise FirstEpochError(f"{path}: weights do not match the architecture in {CONFIG_FILE} "
                              f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); export it again")
    model.to(device).eval()
    return config, model, preprocessor_from_config(config["preprocessing"])
