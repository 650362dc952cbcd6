"""Many prompts generated together: every step decodes one token of each running sequence in one pass of the C
layers, so the weights are read once for all of them (continuous batching, as llama.cpp's server and vLLM do).

A sequence that ends leaves the batch and the others go on. Each sequence has its own slot of the KV cache, its
own sampling and seed, and its rows get the arithmetic they would get alone: what a prompt generates is the same
in a batch as by itself (greedy text, and sampled text for the same seed).
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from typing import Iterator

import torch

from firstepoch.errors import FirstEpochError
from firstepoch.llm.decoder import PREFILL_CHUNK
from firstepoch.llm.generate import GenerationStats, Sampling, _common_prefix, _pick


@torch.no_grad()
def generate_batch(lm, prompts: list[str | list[int]], max_new_tokens: int = 200, temperature: float = 0.8,
                   top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                   special: bool = False) -> list[tuple[str, GenerationStats]]:
    """The continuation of each prompt (text, or token ids) and its stats, all generated together (a `Batcher`
    with a slot each). Prompt i samples with seed `seed + i` when a seed is given. Each stops at the model's end
    tokens or after `max_new_tokens`."""
    if not prompts:
        return []
    if getattr(lm.model, "c_layers", None) is None:
        raise FirstEpochError("batched generation runs in firstepoch's C layers: a GGUF model on the CPU")
    all_ids = [list(p) if isinstance(p, list) else lm.encode(p, special=special) for p in prompts]
    for i, ids in enumerate(all_ids):  # every prompt checked before anything runs
        if not 0 < len(ids) < lm.context:
            raise FirstEpochError(f"prompt {i} has {len(ids)} tokens; it needs 1 to {lm.context - 1} (the context)")
    ends = set(lm.tokenizer.end_ids)
    batcher = Batcher(lm, len(all_ids))
    streams = [batcher.submit(ids, max_new_tokens, Sampling(temperature, top_k, top_p, seed=None if seed is None
                                                            else seed + i), ends) for i, ids in enumerate(all_ids)]
    try:
        while batcher.has_work():
            batcher.step()
    finally:
        lm.model.clear_cache()
    out = []
    for ids, stream in zip(all_ids, streams):
        tokens = list(stream)
        stopped = bool(tokens) and tokens[-1] in ends
        stats = GenerationStats(prompt_tokens=len(ids), completion_tokens=len(tokens),
                                finish_reason="stop" if stopped else "length")
        out.append((_text(lm, ids, tokens[:-1] if stopped else tokens), stats))
    return out


def _text(lm, prompt: list[int], new: list[int]) -> str:
    """The new tokens' text, decoded after the prompt's last token as `LanguageModel.generate` does (a
    SentencePiece "▁word" keeps its space)."""
    if not lm.tokenizer.end_ids:
        return lm.tokenizer.decode(new)
    prefix = prompt[-1:]
    return lm.tokenizer.decode(prefix + new)[len(lm.tokenizer.decode(prefix)):]


AUTO_PARALLEL = 4  # requests a server batches by default where memory allows (llama.cpp's server: 4 slots too)
AUTO_MEMORY_SHARE = 0.25  # the share of free memory the extra slots' KV caches may take by default


def auto_parallel(config, cores: int | None = None, kv_cache: str = "f16") -> int:
    """How many requests a server decodes together by default: AUTO_PARALLEL on a machine of two cores or more
    (one batched step costs little more than one sequence's: the weights are read once), fewer where their KV
    caches would take more than AUTO_MEMORY_SHARE of free memory; 1 on one core."""
    from firstepoch.llm.inference import available_memory, kv_cache_bytes

    cores = cores if cores is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    if cores < 2:
        return 1
    free = available_memory()
    fits = AUTO_PARALLEL if free is None else 1 + int(AUTO_MEMORY_SHARE * free // kv_cache_bytes(config, kv_cache))
    return max(1, min(AUTO_PARALLEL, fits))


_END = object()
PREFILL_ROWS = 256  # prompt rows a step takes from newcomers, so the running streams keep flowing


class _Live:
    """A sequence of a `Batcher`: its prompt, what it generated, where it stands, and the queue its tokens go to."""

    def __init__(self, ids, max_new, sampling, stop, constraint):
        self.history, self.prompt_len, self.max_new = list(ids), len(ids), max_new
        self.sampling, self.stop, self.constraint = sampling, stop, constraint
        self.generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        self.prefilled, self.generated, self.slot = 0, 0, -1
        self.cached = 0  # prompt positions its slot's cache already held (not prefilled)
        self.fed = 0  # positions whose keys and values are in its slot
        self.out: queue.Queue = queue.Queue()
        self.cancelled = False

    def __iter__(self) -> "_Live":
        return self

    def __next__(self) -> int:
        """The next token id as the batch makes it (waiting for its step)."""
        if self.cancelled:
            raise StopIteration
        item = self.out.get()
        if item is _END:
            self.cancelled = True
            raise StopIteration
        if isinstance(item, BaseException):
            self.cancelled = True
            raise item
        return item

    def close(self) -> None:
        """Take the sequence out of the batch (at the next step), whether it started or not."""
        self.cancelled = True


class Batcher:
    """Continuous batching for a server: the sequences of up to `parallel` requests decoded together, one step a
    `step()` call, each in its own slot of one KV cache; a request joins or leaves between steps, and a newcomer's
    prompt is prefilled in chunks of at most `PREFILL_ROWS` rows a step beside the others' decode rows.

    `submit` (any thread) returns a request's token stream; `step` runs on the one thread that runs the model
    (the server's compute thread); `has_work` tells its driver whether to call it. What a sequence generates is
    what it would generate alone (llm.batch), sampling, seed and grammar included."""

    def __init__(self, lm, parallel: int, on_work=lambda: None):
        from firstepoch.llm.inference import available_memory, kv_cache_bytes

        c = lm.model.config  # the one model cache is already counted: the other slots' caches must fit too
        extra = (parallel - 1) * kv_cache_bytes(c, lm.model.kv_cache_type)
        free = available_memory()
        if free is not None and extra > free:
            raise FirstEpochError(f"{parallel} sequences at once need {extra / 2**30:.1f} GiB more of KV cache "
                                  f"({parallel} slots of {c.context} positions) but {free / 2**30:.1f} GiB of memory "
                                  f"is free; lower --parallel or --context")
        self.lm, self.parallel, self.on_work = lm, parallel, on_work
        self.lock = threading.Lock()
        self.pending: deque[_Live] = deque()
        self.running: list[_Live] = []
        self.free = list(range(parallel))
        self.cache = None  # the layers' KV caches, parallel slots of the model's context
        self.held: list[list[int]] = [[] for _ in range(parallel)]  # the tokens each free slot's cache holds

    def submit(self, ids: list[int], max_new_tokens: int, sampling: Sampling, stop: set[int],
               constraint=None) -> Iterator[int]:
        """A request's token ids, an iterator that waits for each step; `close()` it to leave the batch."""
        if not 0 < len(ids) < self.lm.context:
            raise FirstEpochError(f"the prompt has {len(ids)} tokens; it needs 1 to {self.lm.context - 1} (the "
                                  f"context)")
        seq = _Live(ids, max_new_tokens, sampling, stop, constraint)
        with self.lock:
            self.pending.append(seq)
        self.on_work()
        return seq

    def has_work(self) -> bool:
        return bool(self.pending or self.running)

    @torch.no_grad()
    def step(self) -> None:
        model = self.lm.model
        with self.lock:
            for seq in [s for s in self.running if s.cancelled]:
                self._leave(seq, None)
            while self.pending and self.free:
                seq = self.pending.popleft()
                if not seq.cancelled:
                    self._place(seq)
                    self.running.append(seq)
            running = list(self.running)
        if not running:
            return
        try:
            rows, wanted, stepping = self._rows(model, running)
            logits = model.forward_rows(*map(list, zip(*rows)), wanted) if rows else []
        except Exception as exc:  # noqa: BLE001  (every running request hears of it; the batch goes on)
            with self.lock:
                for seq in list(self.running):
                    self._leave(seq, exc)
            return
        for seq, row in zip(stepping, logits):
            try:
                self._advance(seq, row)
            except Exception as exc:  # noqa: BLE001  (a request's own sampling or grammar: it alone ends)
                with self.lock:
                    self._leave(seq, exc)

    def _place(self, seq: _Live) -> None:
        """Give `seq` the free slot whose cache holds the longest start of its prompt (the earlier turns of a chat,
        a shared system prompt: those positions are not prefilled again), else the one freed first. As with one
        sequence's `PromptCache`, the prompt's last two tokens are always run again."""
        common = [_common_prefix(self.held[slot], seq.history) for slot in self.free]
        best = max(range(len(self.free)), key=lambda i: (common[i], -i))
        seq.slot = self.free.pop(best)
        seq.cached = seq.prefilled = seq.fed = max(0, min(common[best], seq.prompt_len - 2))
        self.held[seq.slot] = []

    def _rows(self, model, running: list[_Live]) -> tuple[list, list[int], list[_Live]]:
        """This step's rows (token, position, slot, decode), the rows whose logits are wanted, and their
        sequences: a decode row for each sequence past its prompt, prompt rows for the others within the budget."""
        if self.cache is None:
            model.setup_cache(batch=self.parallel, max_len=model.config.context)
            self.cache = [layer.attn.cache for layer in model.layers]
        for layer, cache in zip(model.layers, self.cache):  # another user of the model may have cleared them
            layer.attn.cache = cache
        rows, wanted, stepping, budget = [], [], [], PREFILL_ROWS
        for seq in running:
            if seq.prefilled < seq.prompt_len:  # a chunk of its prompt, as far as this step's budget goes
                take = min(budget, seq.prompt_len - seq.prefilled)
                if take == 0:
                    continue
                budget -= take
                for p in range(seq.prefilled, seq.prefilled + take):
                    # a one-token run alone (a prompt of one token, or one past a PREFILL_CHUNK of what is
                    # prefilled) sums as a decode, as in `sample_tokens`
                    alone_decode = p == seq.prompt_len - 1 and (p - seq.cached) % PREFILL_CHUNK == 0
                    rows.append((seq.history[p], p, seq.slot, alone_decode))
                seq.prefilled += take
                seq.fed = seq.prefilled
                if seq.prefilled < seq.prompt_len:
                    continue
            else:
                rows.append((seq.history[-1], len(seq.history) - 1, seq.slot, True))
                seq.fed = len(seq.history)
            wanted.append(len(rows) - 1)
            stepping.append(seq)
        return rows, wanted, stepping

    def shutdown(self, error: BaseException) -> None:
        """End every running and waiting request's stream with `error` (the server is stopping)."""
        with self.lock:
            for seq in list(self.running) + list(self.pending):
                self._leave(seq, error)
            self.pending.clear()

    def _advance(self, seq: _Live, logits: torch.Tensor) -> None:
        token = _pick(logits, seq.history, seq.sampling, seq.generator, seq.constraint)
        seq.out.put(token)
        seq.generated += 1
        if seq.constraint is not None and token not in seq.stop:
            seq.constraint.advance(token)  # the last token allowed may complete the text
        done = (token in seq.stop or seq.generated >= seq.max_new or len(seq.history) >= self.lm.context or
                (seq.constraint is not None and seq.constraint.finished))
        if done:
            with self.lock:
                self._leave(seq, None)
        else:
            seq.history.append(token)

    def _leave(self, seq: _Live, error: BaseException | None) -> None:
        """Take `seq` out of the batch (the lock held): its slot is free, its stream ends (with `error`)."""
        if seq in self.running:
            self.running.remove(seq)
            self.free.append(seq.slot)
            # what its slot's cache now holds, for the next request that starts the same way (nothing after an
            # error: the step may have written part of it)
            self.held[seq.slot] = seq.history[:seq.fed] if error is None else []
        seq.out.put(error if error is not None else _END)
