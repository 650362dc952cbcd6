"""Text generation: prefill the prompt in one pass, then decode token by token from the KV cache."""
from __future__ import annotations

from typing import Iterator

import torch

from firstepoch.errors import FirstEpochError


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the `top_k` most likely tokens and the smallest set whose probability reaches `top_p`."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # tokens after the nucleus is full
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample_tokens(model, prompt: list[int], max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  stop: set[int] = frozenset()) -> Iterator[int]:
    """Yield new token ids one by one. `temperature=0` is greedy decoding.

    When the context is full, the older half is dropped and the newer half prefilled again (a context
    shift), so generation can run past the model's context length.
    """
    if not prompt:
        raise FirstEpochError("the prompt is empty; give at least one token of text")
    context = model.config.context
    if len(prompt) > context:
        raise FirstEpochError(f"the prompt has {len(prompt)} tokens but the model's context is {context}; "
                              f"shorten the prompt")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    model.setup_cache(batch=1, max_len=context)
    history = list(prompt)
    try:
        logits = model(torch.tensor([history], device=device))[0, -1]  # prefill: the whole prompt at once
        for _ in range(max_new_tokens):
            if temperature <= 0:
                token = int(logits.argmax())
            else:
                probs = _filter(logits.float() / temperature, top_k, top_p).softmax(-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            yield token
            if token in stop:
                return
            position = len(history)
            history.append(token)
            if position >= context:  # full: keep the newer half and prefill it again
                history = history[-(context // 2):]
                logits = model(torch.tensor([history], device=device))[0, -1]
            else:
                logits = model(torch.tensor([[token]], device=device), start=position)[0, -1]
    finally:
        model.clear_cache()
        model.train(was_training)


class LanguageModel:
    """A tokenizer and a `Transformer`: `generate(prompt)` streams text."""

    def __init__(self, model, tokenizer, config: dict | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config or {}

    def generate(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stream: bool = True):
        """The continuation of `prompt`: a generator of text pieces (`stream=True`) or one string."""
        pieces = self._stream(prompt, max_new_tokens, temperature, top_k, top_p, seed)
        return pieces if stream else "".join(pieces)

    def _stream(self, prompt, max_new_tokens, temperature, top_k, top_p, seed) -> Iterator[str]:
        ids = self.tokenizer.encode(prompt)
        new: list[int] = []
        shown = ""
        for token in sample_tokens(self.model, ids, max_new_tokens, temperature, top_k, top_p, seed):
            new.append(token)
            text = self.tokenizer.decode(new)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            yield text[len(shown):]
            shown = text
        if rest := self.tokenizer.decode(new)[len(shown):]:  # a trailing incomplete character
            yield rest
