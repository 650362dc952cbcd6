"""Optimisers by name, and learning-rate schedules as functions of training progress."""
from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from firstepoch.errors import FirstEpochError


def newton_schulz(g: torch.Tensor, steps: int = 3, dtype=torch.float32) -> torch.Tensor:
    """The semi-orthogonal matrix nearest to g (its singular values pushed to about 1), by a quintic
    Newton-Schulz iteration whose coefficients converge in few steps (to within ~0.3 of 1, which is enough).
    g: one matrix (rows, cols) or a stack of them (n, rows, cols)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = (g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)).to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


@cache
def _bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    try:  # CPUs with bf16 dot-product instructions; elsewhere bf16 matmuls are emulated and slower than fp32
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Muon(torch.optim.Optimizer):
    """Muon for the hidden weight matrices, AdamW for everything else (embeddings, output layer, norms, biases).

    A group with `muon=True` steps each matrix along its Nesterov momentum made semi-orthogonal
    (`newton_schulz`), scaled by sqrt(max(1, rows / cols)), at `lr * muon_scale`, without weight decay;
    other groups take AdamW steps with `betas`, `eps` and `weight_decay`. Build the groups with `muon_groups`.
    Trains transformers to a given loss in markedly fewer steps than AdamW (benchmarks/gpt_vs_nanogpt.py).
    """

    def __init__(self, params, lr: float = 3e-3, weight_decay: float = 0.01, betas=(0.9, 0.95), eps: float = 1e-8,
                 muon_scale: float = 6.0, muon_momentum: float = 0.95, ns_steps: int = 3):
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, muon=False, muon_scale=muon_scale,
                        muon_momentum=muon_momentum, ns_steps=ns_steps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon_steps(params, group)
            else:
                for p in params:
                    self._adamw_step(p, group)
        return loss

    def _muon_steps(self, params: list[torch.Tensor], group: dict) -> None:
        """Nesterov momentum, orthogonalised: matrices of one shape go through Newton-Schulz together."""
        beta, by_shape = group["muon_momentum"], {}
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffer = state["momentum_buffer"]
            buffer.mul_(beta).add_(p.grad)
            by_shape.setdefault(p.shape, []).append((p, p.grad.add(buffer, alpha=beta)))
        for shape, pairs in by_shape.items():
            dtype = torch.bfloat16 if _bf16_is_fast(pairs[0][0].device) else torch.float32
            updates = newton_schulz(torch.stack([g for _, g in pairs]), group["ns_steps"], dtype)
            scale = -group["lr"] * group["muon_scale"] * max(1.0, shape[0] / shape[1]) ** 0.5
            for (p, _), update in zip(pairs, updates):
                p.add_(update, alpha=scale)

    def _adamw_step(self, p: torch.Tensor, group: dict) -> None:
        state, (beta1, beta2) = self.state[p], group["betas"]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        step = state["step"].item()
        p.mul_(1 - group["lr"] * group["weight_decay"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1 ** step))


def muon_groups(model: nn.Module) -> list[dict]:
    """Muon's parameter groups: the 2-D weights of the model's linear layers, except its last one (the output
    layer) and any shared with an embedding (a tied output layer), then everything else for AdamW."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    hidden = {id(m.weight) for m in linears[:-1] if id(m.weight) not in embedded}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) in hidden], "muon": True},
            {"params": [p for p in params if id(p) not in hidden], "muon": False}]


# name -> (constructor, default learning rate)
OPTIMIZERS: dict[str, tuple[Callable, float]] = {
    "sgd": (lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd), 1e-2),
    "adam": (lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd), 1e-3),
    "adamw": (lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd), 1e-3),
    "rmsprop": (lambda params, lr, wd: torch.optim.RMSprop(params, lr=lr, weight_decay=wd), 1e-3),
    "muon": (lambda params, lr, wd: Muon(params, lr=lr, weight_decay=wd), 3e-3),  # params: muon_groups(model)
}


def make_optimizer(name: str, params, lr: float | None, wd: float) -> torch.optim.Optimizer:
    """`params`: parameters or groups; for "muon", the groups of `muon_groups`."""
    if name not in OPTIMIZERS:
        raise FirstEpochError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    make, default_lr = OPTIMIZERS[name]
    return make(params, default_lr if lr is None else lr, wd)


def cosine(start: float, end: float, pct: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


def one_cycle(lr_max: float, pct_start: float = 0.25, div: float = 25.0, div_final: float = 1e5):
    """The 1cycle policy: cosine warm-up from lr_max/div to lr_max, then cosine down to lr_max/div_final.

    Returns (lr(pct), momentum(pct)) where pct in [0, 1] is the fraction of training done.
    """

    def lr(pct: float) -> float:
        if pct < pct_start:
            return cosine(lr_max / div, lr_max, pct / pct_start)
        return cosine(lr_max, lr_max / div_final, (pct - pct_start) / (1 - pct_start))

    def momentum(pct: float) -> float:
        if pct < pct_start:
            return cosine(0.95, 0.85, pct / pct_start)
        return cosine(0.85, 0.95, (pct - pct_start) / (1 - pct_start))

    return lr, momentum
