"""LEGO bricks: `linear`, `mlp`, `cnn` and timm architectures, each rebuildable from a JSON spec.

Every builder stores its arguments on the module as `model.spec` ({"arch": name, **kwargs}); a bundle
saves that spec beside the weights and `build(spec)` makes the same architecture again.
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from firstepoch.errors import FirstEpochError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise FirstEpochError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _with_spec(model: nn.Module, arch: str, **kwargs) -> nn.Module:
    model.spec = {"arch": arch, **kwargs}
    return model


def linear(n_in: int, n_out: int) -> nn.Module:
    """One linear layer over flattened inputs: linear or logistic regression."""
    return _with_spec(nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out)), "linear", n_in=n_in, n_out=n_out)


def mlp(n_in: int, n_out: int, hidden: list[int] = (200, 100), activation: str = "relu",
        dropout: float = 0.0, batchnorm: bool = True) -> nn.Module:
    """A multi-layer perceptron over flattened inputs: Linear [-> BatchNorm] -> activation [-> Dropout] ..."""
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [n_in, *hidden]
    for a, b in zip(sizes, sizes[1:]):
        layers.append(nn.Linear(a, b))
        if batchnorm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], n_out))
    return _with_spec(nn.Sequential(*layers), "mlp", n_in=n_in, n_out=n_out, hidden=list(hidden),
                      activation=activation, dropout=dropout, batchnorm=batchnorm)


def _conv_block(c_in: int, c_out: int, stride: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), _activation(activation))


def cnn(in_channels: int, n_out: int, widths: list[int] = (32, 64, 128), activation: str = "relu",
        dropout: float = 0.1) -> nn.Module:
    """A small CNN: per width, a stride-2 conv block then a stride-1 one; global average pool; linear head.

    Works for any image size >= 2**len(widths) pixels.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        layers += [_conv_block(c, w, 2, activation), _conv_block(w, w, 1, activation)]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c, n_out)]
    return _with_spec(nn.Sequential(*layers), "cnn", in_channels=in_channels, n_out=n_out,
                      widths=list(widths), activation=activation, dropout=dropout)


def timm_model(name: str, in_channels: int, n_out: int, pretrained: bool = False) -> nn.Module:
    """Any timm architecture by name (randomly initialised unless `pretrained`)."""
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.75)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise FirstEpochError(f"unknown architecture {name!r}{hint}")
    model = timm.create_model(name, pretrained=pretrained, in_chans=in_channels, num_classes=n_out)
    return _with_spec(model, "timm", name=name, in_channels=in_channels, n_out=n_out)


def transformer(**config) -> nn.Module:
    """The decoder-only `Transformer` (see `firstepoch.models.transformer`)."""
    from firstepoch.models.transformer import Transformer, TransformerConfig

    return Transformer(TransformerConfig(**config))


BUILDERS: dict[str, Callable[..., nn.Module]] = {"linear": linear, "mlp": mlp, "cnn": cnn, "timm": timm_model,
                                                 "transformer": transformer}


def build(spec: dict) -> nn.Module:
    """The architecture a `model.spec` describes (weights freshly initialised)."""
    spec = dict(spec)
    arch = spec.pop("arch", None)
    if arch not in BUILDERS:
        raise FirstEpochError(f"unknown architecture {arch!r} in model spec; known: {', '.join(BUILDERS)}")
    return BUILDERS[arch](**spec)


def create_model(arch: str, input_shape: list[int], n_out: int, **kwargs) -> nn.Module:
    """A model named `arch` ("linear", "mlp", "cnn" or a timm name) sized for the data."""
    n_in = math.prod(input_shape)
    if arch in ("transformer", "gpt"):
        from firstepoch.models.transformer import Transformer, from_preset

        return Transformer(from_preset(kwargs.pop("preset", "tiny"), n_out, input_shape[0], **kwargs))
    if arch in ("linear", "mlp"):
        return BUILDERS[arch](n_in=n_in, n_out=n_out, **kwargs)
    if len(input_shape) != 3:
        raise FirstEpochError(f"architecture {arch!r} needs images (C, H, W) but the inputs have shape "
                              f"{list(input_shape)}; use arch 'mlp' or 'linear'")
    if arch == "cnn":
        return cnn(in_channels=input_shape[0], n_out=n_out, **kwargs)
    return timm_model(arch, in_channels=input_shape[0], n_out=n_out, **kwargs)
