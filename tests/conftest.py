"""Shared fixtures: small real data, and a guard that keeps tests off the user's runs/ and cache folders."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTEPOCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FIRSTEPOCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FIRSTEPOCH_DEVICE", "cpu")
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 1,797 real 8x8 handwritten digits as (x (N, 64) float in [0, 1], y (N,) int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.int64)


def linear_data(n: int = 256, seed: int = 0):
    """y = 3x - 2 + noise: the synth_learner of fastai's tests."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    return x, 3 * x[:, 0] - 2 + 0.05 * torch.randn(n, generator=g)


def record_output_dtypes(model: torch.nn.Module) -> tuple[list, list]:
    """Forward hooks on every Linear and conv layer of `model`: they record the dtype each output had as it ran
    (what autocast really computed in). Returns (the list they fill, the hooks to remove)."""
    seen, hooks = [], []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            hooks.append(module.register_forward_hook(lambda m, args, out: seen.append(out.dtype)))
    return seen, hooks
