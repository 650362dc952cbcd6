"""Perplexity of a language model on a text: how surprised it is by each next token (lower is better).

As llama.cpp's `llama-perplexity` does, the text is cut into windows of `window` tokens; in each, only the
second half is scored, so every scored token sees at least half a window of context.
"""
from __future__ import annotations

import math
import time

import torch

from firstepoch.errors import FirstEpochError


@torch.no_grad()
def perplexity(lm, text: str, window: int = 512, max_windows: int | None = None) -> dict:
    """Returns {"perplexity", "tokens" (scored), "windows", "seconds"}."""
    window = min(window, lm.context)
    ids = lm.encode(text)
    if len(ids) < window:
        raise FirstEpochError(f"the text has {len(ids)} tokens; perplexity needs at least one window of {window} "
                              f"(give a longer text or a smaller --window)")
    starts = list(range(0, len(ids) - window + 1, window))[:max_windows]
    total, count, began = 0.0, 0, time.perf_counter()
    lm.model.eval()
    device = next(iter(lm.model.state_dict().values())).device
    for start in starts:
        chunk = torch.tensor([ids[start:start + window]], device=device)
        logits = lm.model(chunk)[0, :-1].float()
        targets = chunk[0, 1:]
        scored = slice(window // 2 - 1, None)  # the second half of the window
        total += torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
        count += targets[scored].numel()
    return {"perplexity": math.exp(total / count), "tokens": count, "windows": len(starts),
            "seconds": time.perf_counter() - began}
