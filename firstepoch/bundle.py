"""Bundles: a folder with `model.safetensors` + `firstepoch.json`, written atomically, never a pickle.

`save_bundle` is what `Learner.export` calls; `load` gives back a `Predictor` that needs none of the
training code: the JSON holds the architecture spec, the preprocessing, the classes and the provenance.
"""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from firstepoch.core.io import write_json
from firstepoch.data.loaders import preprocessor_from_config
from firstepoch.errors import FirstEpochError

FORMAT = "firstepoch.bundle"
CONFIG_FILE = "firstepoch.json"
WEIGHTS_FILE = "model.safetensors"


def _versions() -> dict:
    from firstepoch import __version__

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


class Predictor:
    """A trained model ready to use: `predict(item)` for one raw item, `evaluate(data)` for labelled data."""

    def __init__(self, model: nn.Module, preprocessor, task: str, classes: list[str] | None,
                 device: torch.device | str = "cpu", config: dict | None = None):
        self.model, self.preprocessor, self.task, self.classes = model, preprocessor, task, classes
        self.device = torch.device(device)
        self.config = config or {}
        self.tta = False

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            if self.tta and self.task == "classification" and x.dim() == 4:
                return self._tta_outputs(x)
            return self.model(x.to(self.device)).float().cpu()

    def _tta_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time augmentation: the mean of the class probabilities over the image, a 90% centre zoom and,
        when the model was trained with flips, the mirror image; as log-probabilities (so argmax, softmax
        and the loss read them as usual)."""
        size = x.shape[-2:]
        margin_h, margin_w = round(size[0] * 0.05), round(size[1] * 0.05)
        zoom = x[..., margin_h:size[0] - margin_h, margin_w:size[1] - margin_w]
        views = [x, torch.nn.functional.interpolate(zoom, size=size, mode="bilinear", align_corners=False)]
        if getattr(self.preprocessor, "flip", False):
            views.append(x.flip(-1))
        probs = torch.stack([self.model(v.to(self.device)).float().softmax(-1).cpu() for v in views]).mean(0)
        return probs.clamp_min(1e-12).log()

    def predict(self, item, tta: bool | None = None) -> dict:
        """Predict one raw item (an image path, a dict of CSV fields, a tensor); `tta` averages over
        augmented views of an image (default: the predictor's `tta` attribute, False).

        Returns:
            classification: {"label", "index", "probability", "probs": {class: p}};
            regression: {"value"} (a float, or a list for several targets).
        """
        with self._tta(tta):
            out = self._outputs(self.preprocessor.encode(item).unsqueeze(0))[0]
        return self._decode(out)

    @contextmanager
    def _tta(self, tta: bool | None):
        """Test-time augmentation on or off for one call (None: the predictor's own setting)."""
        before = self.tta
        self.tta = before if tta is None else tta
        try:
            yield
        finally:
            self.tta = before

    def _decode(self, out: torch.Tensor) -> dict:
        if self.task == "classification":
            probs = out.softmax(-1)
            index = int(probs.argmax())
            classes = self.classes or [str(i) for i in range(len(probs))]
            return {"label": classes[index], "index": index, "probability": float(probs[index]),
                    "probs": {c: float(p) for c, p in zip(classes, probs)}}
        return {"value": out.item() if out.numel() == 1 else out.tolist()}

    def labelled_outputs(self, data: str | Path, batch_size: int = 64) -> tuple[list, torch.Tensor, torch.Tensor]:
        """(items, model outputs, targets) for labelled data, for `score` and `interpret` to share."""
        from firstepoch.data.labelled import read_labelled

        items, targets = read_labelled(data, self)
        outputs = [self._outputs(torch.stack([self.preprocessor.encode(i) for i in items[s:s + batch_size]]))
                   for s in range(0, len(items), batch_size)]
        return items, torch.cat(outputs), targets

    def evaluate(self, data: str | Path, metrics: list[str] | None = None, batch_size: int = 64,
                 tta: bool | None = None) -> dict:
        """Metrics of this model on labelled data: an image folder with one sub-folder per class, or a CSV
        with the target column; `tta` averages over augmented views. Returns {"n": number of items, metric:
        value, ...}."""
        with self._tta(tta):
            _, outputs, targets = self.labelled_outputs(data, batch_size)
        return self.score(outputs, targets, metrics)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor, metrics: list[str] | None = None) -> dict:
        """{"n", metric: value, ...} of outputs against targets (the bundle's own metrics by default)."""
        from firstepoch.core.metrics import DEFAULT_METRICS, get_metric

        names = metrics or self.config.get("training", {}).get("metrics") or DEFAULT_METRICS[self.task]
        result = {"n": len(targets)}
        for meter in map(get_metric, names):
            meter.reset()
            meter.accumulate(outputs, targets)
            result[meter.name] = meter.value
        return result

    def confusion(self, data: str | Path) -> torch.Tensor:
        """The confusion matrix (rows: true class, columns: predicted) on labelled data."""
        from firstepoch.core.metrics import confusion_matrix

        _, outputs, targets = self.labelled_outputs(data)
        return confusion_matrix(outputs, targets)


def load(path: str | Path, device: str | None = None):
    """Load a bundle folder as a `Predictor`, or a `LanguageModel` for a GPT (weights via safetensors; no
    pickle, no training code)."""
    from firstepoch.core.device import default_device
    from firstepoch.models import build

    path = Path(path)
    config = read_config(path)
    device = default_device(device)
    model = build(config["model"])
    try:
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    except Exception as exc:
        raise FirstEpochError(f"{path / WEIGHTS_FILE}: cannot load the weights ({str(exc).splitlines()[0][:200]})")
    if missing or unexpected:
        raise FirstEpochError(f"{path}: weights do not match the architecture in {CONFIG_FILE} "
                              f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); export it again")
    model.to(device).eval()
    if config["task"] == "language_model":
        from firstepoch.llm import LanguageModel

        return LanguageModel(model, preprocessor_from_config(config["preprocessing"]).tokenizer, config)
    return Predictor(model, preprocessor_from_config(config["preprocessing"]), config["task"],
                     config.get("classes"), device, config)
