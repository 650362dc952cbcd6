"""Device choice, seeding and the optional `torch.compile` with a one-warning fallback."""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

from firstepoch.errors import FirstEpochError

_DEVICES = ("cpu", "cuda", "mps")


def default_device(force: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU; `force` ("cpu", "cuda", "cuda:1", "mps") overrides."""
    force = force or os.environ.get("FIRSTEPOCH_DEVICE")
    if force:
        kind = force.split(":")[0]
        if kind not in _DEVICES:
            raise FirstEpochError(f"unknown device {force!r}; use one of cpu, cuda, cuda:N, mps")
        if kind == "cuda" and not torch.cuda.is_available():
            raise FirstEpochError(f"device {force!r} asked for but CUDA is not available here; use --device cpu")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise FirstEpochError("device 'mps' asked for but MPS is not available here; use --device cpu")
        return torch.device(force)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices). `deterministic` also picks deterministic GPU kernels
    (cuDNN's fastest convolution backward is not), at some cost in speed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict:
    """Every RNG state as tensors and plain values (loadable with `weights_only=True`)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision this device trains well in: fp16 on CUDA (bf16 where supported), bf16 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU/MPS allocators' RuntimeErrors."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


class CompiledForward:
    """The forward pass through `torch.compile` when `enabled`: the first model it is called with is compiled;
    where compiling or running compiled code fails (no C compiler, an unsupported GPU or op) it warns once and
    runs models as they are from then on. Running out of memory is not a compile failure: it is raised."""

    def __init__(self, enabled: bool):
        self.enabled, self._compiled = enabled, None

    def __call__(self, model, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return model(x)
        if self._compiled is None:
            self._compiled = torch.compile(model)
        try:
            return self._compiled(x)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            warnings.warn(f"torch.compile failed here ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                          f"continuing without it", stacklevel=3)
            self.enabled = False
            return model(x)
