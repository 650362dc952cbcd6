"""Checkpoints: everything a run needs to continue bit-exactly, saved atomically, loaded without pickle."""
from __future__ import annotations

from pathlib import Path

import torch

from firstepoch.core.callbacks import Callback
from firstepoch.core.io import load_torch, save_torch
from firstepoch.errors import FirstEpochError

FORMAT = "firstepoch.checkpoint"
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrap a model and prefix its keys


def clean_state_dict(state: dict) -> dict:
    """Strip the prefixes that compiled and DDP models add, and move tensors to the CPU."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    return out


def save_checkpoint(state: dict, path: str | Path) -> None:
    save_torch({"format": FORMAT, "version": 1, **state}, path)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `save_checkpoint`, or a bare state dict (e.g. from a plain PyTorch script)."""
    state = load_torch(path)
    if not isinstance(state, dict):
        raise FirstEpochError(f"{path}: not a checkpoint (holds a {type(state).__name__}, expected a dict)")
    if state.get("format") != FORMAT:
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise FirstEpochError(f"{path}: not a firstepoch checkpoint nor a state dict")
    return state


class Checkpoint(Callback):
    """Saves the whole training state at every epoch end and when the run is stopped (Ctrl-C, SIGTERM)."""

    order = 55

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._saved_at = None

    def _save(self):
        if self.learn.is_main and self._saved_at != self.learn.resume_point:
            self.learn.save(self.path)
            self._saved_at = self.learn.resume_point

    def after_epoch(self):
        self._save()

    def after_cancel_fit(self):
        self._save()
