"""`Predictor`: a trained classifier or regressor ready to use on raw items, with test-time augmentation and
evaluation on labelled data. It needs none of the training code."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from firstepoch.bundle import read_bundle
from firstepoch.core.device import default_device
from firstepoch.data.core import Preprocessor
from firstepoch.errors import FirstEpochError


class Predictor:
    """A trained model ready to use: `predict(item)` for one raw item, `evaluate(data)` for labelled data."""

    def __init__(self, model: nn.Module, preprocessor: Preprocessor, task: str, classes: list[str] | None,
                 device: torch.device | str = "cpu", config: dict | None = None):
        self.model, self.preprocessor, self.task, self.classes = model, preprocessor, task, classes
        self.device = torch.device(device)
        self.config = config or {}
        self.tta = False

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | None = None) -> "Predictor":
        """The classifier or regressor a bundle folder holds."""
        device = default_device(device)
        config, model, preprocessor = read_bundle(path, device)
        return cls(model, preprocessor, config["task"], config.get("classes"), device, config)

    @property
    def kind(self) -> str:
        """What a server serves it as: "classifier" or "regressor"."""
        return "classifier" if self.task == "classification" else "regressor"

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
        """(items, model outputs, targets) for labelled data (an image folder with one sub-folder per class, or
        a CSV holding the target column), for `score` and `interpret` to share."""
        data = Path(data)
        if not data.exists():
            raise FirstEpochError(f"{data}: no such file or folder")
        items, targets = self.preprocessor.read_labelled(data, self.classes, self.task)
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
