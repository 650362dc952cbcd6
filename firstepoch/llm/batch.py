"""Many prompts generated together: every step decodes one token of each running sequence in one pass of the C
layers, so the weights are read once for all of them (continuous batching, as llama.cpp's server and vLLM do).

A sequence that ends leaves the batch and the others go on. Each sequence has its own slot of the KV cache, its
own sampling and seed, and its rows get the arithmetic they would get alone: what a prompt generates is the same
in a batch as by itself (greedy text, and sampled text for the same seed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from firstepoch.errors import FirstEpochError
from firstepoch.llm.generate import GenerationStats, Sampling, _pick


@dataclass
class _Sequence:
    slot: int
    history: list[int]  # prompt and generated tokens; all but the newest are in the cache
    sampling: Sampling
    generator: torch.Generator | None
    new: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)


@torch.no_grad()
def generate_batch(lm, prompts: list[str | list[int]], max_new_tokens: int = 200, temperature: float = 0.8,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                   special: bool = False) -> list[tuple[str, GenerationStats]]:
    """The continuation of each prompt (text, or token ids) and its stats, all generated together. Prompt i
    samples with seed `seed + i` when a seed is given. Each stops at the model's end tokens or after
    `max_new_tokens`."""
    model = lm.model
    if not prompts:
        return []
    if getattr(model, "c_layers", None) is None:
        raise FirstEpochError("batched generation runs in firstepoch's C layers: a GGUF model on the CPU")
    ends = set(lm.tokenizer.end_ids)
    sequences = []
    for i, prompt in enumerate(prompts):
        ids = list(prompt) if isinstance(prompt, list) else lm.encode(prompt, special=special)
        if not ids or len(ids) >= lm.context:
            raise FirstEpochError(f"prompt {i} has {len(ids)} tokens; it needs 1 to {lm.context - 1} (the context)")
        sampling = Sampling(temperature, top_k, top_p, seed=None if seed is None else seed + i)
        generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        sequences.append(_Sequence(i, ids, sampling, generator, stats=GenerationStats(prompt_tokens=len(ids))))
    model.eval()
    model.setup_cache(batch=len(sequences), max_len=min(lm.context, max(len(s.history) for s in sequences) +
                                                         max_new_tokens))
    try:
        # every prompt's rows in one pass (a prompt of one token is a decode step alone: the same here)
        ids = [t for s in sequences for t in s.history]
        positions = [p for s in sequences for p in range(len(s.history))]
        slots = [s.slot for s in sequences for _ in s.history]
        decode = [len(s.history) == 1 for s in sequences for _ in s.history]
        ends_at = torch.tensor([len(s.history) for s in sequences]).cumsum(0) - 1
        logits = model.forward_rows(ids, positions, slots, decode, ends_at.tolist())
        running = list(sequences)
        while running:
            still = []
            for s, row in zip(running, logits):
                token = _pick(row, s.history, s.sampling, s.generator)
                s.stats.completion_tokens += 1
                if token in ends:
                    s.stats.finish_reason = "stop"
                    continue
                s.new.append(token)
                s.history.append(token)
                if len(s.new) < max_new_tokens and len(s.history) < model.layers[0].attn.cache.k.shape[2]:
                    still.append(s)
            running = still
            if running:  # one decode step for all that go on
                logits = model.forward_rows([s.history[-1] for s in running], [len(s.history) - 1 for s in running],
                                            [s.slot for s in running], [True] * len(running),
                                            list(range(len(running))))
    finally:
        model.clear_cache()
    return [(_text(lm, s), s.stats) for s in sequences]


def _text(lm, s: _Sequence) -> str:
    """The new tokens' text, decoded after the prompt's last token as `LanguageModel.generate` does (a
    SentencePiece "▁word" keeps its space)."""
    if not lm.tokenizer.end_ids:
        return lm.tokenizer.decode(s.new)
    prefix = s.history[len(s.history) - len(s.new) - 1:len(s.history) - len(s.new)]
    return lm.tokenizer.decode(prefix + s.new)[len(lm.tokenizer.decode(prefix)):]
