"""Text generation: prefill the prompt in one pass, then decode token by token from the KV cache.

`sample_tokens` is the loop on token ids; `LanguageModel` adds the tokenizer, stop strings and the chat
template. Each streamed generation is a `Generation`, whose own `GenerationStats` (token counts, timings,
finish reason) are what `firstepoch generate` prints and the server reports.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import AbstractSet, Iterator, Protocol

import torch

from firstepoch.errors import FirstEpochError


@dataclass
class Sampling:
    """How to pick the next token. `temperature=0` is greedy; the filters apply in llama.cpp's order:
    repetition penalty, top-k, top-p, min-p, temperature."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and math.isfinite(self.repetition_penalty)):
            raise FirstEpochError("temperature and repetition_penalty must be finite numbers")
        if self.temperature < 0 or self.repetition_penalty <= 0:
            raise FirstEpochError("temperature must be >= 0 and repetition_penalty > 0")
        for name in ("top_p", "min_p"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:  # NaN fails this too
                raise FirstEpochError(f"{name} must be between 0 and 1, not {value}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise FirstEpochError(f"seed must be between 0 and 2^64 - 1, not {self.seed}")


def _penalise(logits: torch.Tensor, recent: list[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: divide positive logits of recent tokens by `penalty`, multiply negative."""
    if penalty == 1.0 or not recent:
        return logits
    ids = torch.tensor(sorted(set(recent)), device=logits.device)
    chosen = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(chosen > 0, chosen / penalty, chosen * penalty)
    return logits


def _filter(logits: torch.Tensor, top_k: int | None, top_p: float | None, min_p: float | None = None) -> torch.Tensor:
    """Keep the `top_k` most likely tokens, the smallest set whose probability reaches `top_p`, and those
    at least `min_p` times as likely as the most likely one."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # tokens after the nucleus is full
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if min_p is not None and min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def _pick(logits: torch.Tensor, history: list[int], s: Sampling, generator, constraint=None) -> int:
    if constraint is not None:  # what the output's grammar rules out is never picked, whatever the sampling
        logits = constraint.mask(logits)
    recent = history[-s.repeat_last_n:] if s.repeat_last_n > 0 else (history if s.repeat_last_n < 0 else [])
    logits = _penalise(logits.float(), recent, s.repetition_penalty)  # llama.cpp: 0 disables, -1 is everything
    if s.temperature <= 0:
        return int(logits.argmax())
    probs = (_filter(logits, s.top_k, s.top_p, s.min_p) / s.temperature).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def sample_tokens(model, prompt: list[int], max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  stop: set[int] = frozenset(), sampling: Sampling | None = None,
                  context_shift: bool = True, cache: PromptCache | None = None,
                  constraint=None) -> Iterator[int]:
    """Yield new token ids one by one; the last is a `stop` id when one was produced.

    When the context is full, the older half is dropped and the newer half prefilled again (a context
    shift), so generation can run past the model's context length; `context_shift=False` stops there.
    With a `cache` (and no context shift), the positions it holds of the prompt's start are not prefilled
    again, and it keeps this generation's KV cache for the next. A `constraint` (`structured.Constraint`) masks
    what its grammar does not allow before each token is picked; the generation stops once its text is complete.
    """
    s = sampling or Sampling(temperature, top_k, top_p, seed=seed)
    if not prompt:
        raise FirstEpochError("the prompt is empty; give at least one token of text")
    context = model.config.context
    if len(prompt) > context:
        raise FirstEpochError(f"the prompt has {len(prompt)} tokens but the model's context is {context}; "
                              f"shorten the prompt")
    device = next(iter(model.state_dict().values())).device
    generator = torch.Generator(device=device).manual_seed(s.seed) if s.seed is not None else None
    was_training = model.training
    model.eval()
    cache = cache if not context_shift else None
    max_len = min(context, len(prompt) + max_new_tokens) if not context_shift else context
    start = cache.attach(model, prompt, max_len) if cache is not None else 0
    if cache is None:
        model.setup_cache(batch=1, max_len=max_len)
    history = list(prompt)  # the tokens whose keys and values are in the cache, once the model has run
    consistent = False  # whether the cache holds `history` when this ends
    try:
        logits = model(torch.tensor([history[start:]], device=device), start=start, last_only=True)[0, -1]  # prefill
        consistent = True
        for left in range(max_new_tokens - 1, -1, -1):
            token = _pick(logits, history, s, generator, constraint)
            if constraint is not None and token not in stop:
                constraint.advance(token)  # before the token is seen: the last one allowed may complete the text
            yield token
            if token in stop or not left or (constraint is not None and constraint.finished):
                return  # the last token is not run: nothing comes after it
            position = len(history)
            if position >= context:
                if not context_shift:
                    return
                history = (history + [token])[-(context // 2):]  # full: keep the newer half and prefill it again
                logits = model(torch.tensor([history], device=device), last_only=True)[0, -1]
            else:
                consistent = False
                logits = model(torch.tensor([[token]], device=device), start=position)[0, -1]
                history.append(token)
                consistent = True
    finally:
        if cache is not None and consistent:
            cache.detach(model, history)
        model.clear_cache()
        model.train(was_training)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PromptCache:
    """The KV cache of a model's last generation, kept for its next one: a prompt that starts with the tokens it
    holds (the earlier turns of a chat, a shared system prompt) prefills only the rest, as llama.cpp's server and
    Ollama reuse a slot's cache. One sequence; its owner runs one generation at a time. Between generations the
    cache is held here, not by the model, so nothing else that runs the model can overwrite it.

    `reused` is the number of prompt tokens the last generation did not prefill."""

    def __init__(self):
        self.ids: list[int] = []  # the tokens at positions 0, 1, ... of `caches`
        self.caches: list | None = None  # a KVCache per layer
        self.reused = 0

    def attach(self, model, prompt: list[int], max_len: int) -> int:
        """Give the model a KV cache of at least `max_len` positions for `prompt`, holding what this cache held
        of the prompt's start; the number of positions kept, where prefill starts. The prompt's last two tokens
        are always run again: the last one's logits pick the first new token, and a run of two tokens is a
        prefill, whose arithmetic (unlike a one-token step's) is that of prefilling the whole prompt, so the same
        prompt again gets the same answer."""
        held, self.caches, ids = self.caches, None, self.ids
        self.ids, kept = [], 0
        if held is not None and len(held) == len(model.layers) and held[0].k.device == model.norm.weight.device:
            kept = max(0, min(_common_prefix(ids, prompt), len(prompt) - 2))
            if held[0].k.shape[2] >= max_len:  # big enough: positions past `kept` are written before being read
                for layer, layer_cache in zip(model.layers, held):
                    layer.attn.cache = layer_cache
                self.reused = kept
                return kept
        model.setup_cache(batch=1, max_len=min(model.config.context, -(-max_len // 256) * 256))
        for layer, old in zip(model.layers, held if kept else []):
            layer.attn.cache.k[:, :, :kept] = old.k[:, :, :kept]
            layer.attn.cache.v[:, :, :kept] = old.v[:, :, :kept]
        self.reused = kept
        return kept

    def detach(self, model, ids: list[int]) -> None:
        """After a generation: take the model's KV cache, which holds `ids`, for the next one."""
        self.caches, self.ids = [layer.attn.cache for layer in model.layers], list(ids)

    def clear(self) -> None:
        self.ids, self.caches = [], None


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string: the longest end of `text`
    that begins a stop string. Only ends that start with a stop string's first character are compared."""
    longest = 0
    for s in stops:
        tail = text[-(len(s) - 1):] if len(s) > 1 else ""
        at = tail.find(s[0]) if s else -1
        while at >= 0 and len(tail) - at > longest:
            if s.startswith(tail[at:]):
                longest = len(tail) - at
                break
            at = tail.find(s[0], at + 1)
    return longest


class PromptTokenizer(Protocol):
    """What a `LanguageModel` asks of its tokenizer: an LLM's (`llm.tokenizer.LLMTokenizer`) or a GPT's own
    (`data.text`)."""

    end_ids: AbstractSet[int]  # tokens that end a generation; none for a GPT of your own
    bos_id: int | None  # the begin and end tokens a chat template may name; None for a GPT of your own
    eos_id: int | None

    def encode_prompt(self, text: str, special: bool = False) -> list[int]: ...  # BOS and control tokens as due

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class GenerationStats:
    """The figures of one generation, filled in as it runs.

    finish_reason is "stop" (an end token or a stop string), "length" (the token limit), or, from the server,
    "timeout" or "shutdown" (cut short). prompt_seconds is the prefill's time up to the first new token,
    decode_seconds the time of the tokens after it. cached_tokens of the prompt's were not prefilled again: the
    prompt cache held them from the generation before.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line of speeds, as `firstepoch generate` prints it."""
        prompt = (self.prompt_tokens - self.cached_tokens) / max(self.prompt_seconds, 1e-9)
        decoded = max(self.completion_tokens - 1, 0)  # the first new token comes with the prefill
        decode = decoded / self.decode_seconds if self.decode_seconds else 0.0
        cached = f" ({self.cached_tokens} from the prompt cache)" if self.cached_tokens else ""
        return (f"{self.prompt_tokens} prompt tokens{cached} at {prompt:.1f} tokens/s, {self.completion_tokens} "
                f"generated at {decode:.1f} tokens/s (finish: {self.finish_reason})")


class Generation:
    """One streamed generation: iterate it for text pieces; `stats` are its own (final once it has ended),
    so generations running side by side never mix their figures. `close()` stops it early."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats):
        self._pieces, self.stats = pieces, stats

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()


class LanguageModel:
    """A tokenizer and a `Transformer` (+ a chat template): `generate(prompt)` and `chat(messages)` stream text
    as a `Generation`, which carries the `GenerationStats` of that call. Its `prompt_cache` keeps the last
    generation's KV cache, so the next turn of a chat prefills only what is new."""

    kind = "llm"  # what a server serves it as

    def __init__(self, model, tokenizer: PromptTokenizer, config: dict | None = None, chat=None):
        self.model, self.tokenizer, self.config = model, tokenizer, config or {}
        self.chat_template = chat
        self.prompt_cache = PromptCache()
        self.batcher = None  # a server's llm.batch.Batcher, when it batches this model's requests

    @property
    def context(self) -> int:
        return self.model.config.context

    def set_kv_cache(self, kind: str) -> None:
        """The KV cache's number format from now on: "f16" (llama.cpp's default) or "q8_0" (Q8_0 blocks: about half
        the memory; firstepoch's C layers only, heads a multiple of 32 long)."""
        from firstepoch.llm.decoder import KV_CACHE_TYPES

        if kind not in KV_CACHE_TYPES:
            raise FirstEpochError(f"--kv-cache {kind!r}: choose one of {', '.join(KV_CACHE_TYPES)}")
        if kind != "f16" and (getattr(self.model, "c_layers", None) is None or self.model.config.head_dim % 32):
            raise FirstEpochError(f"--kv-cache {kind}: only firstepoch's C layers read it (a GGUF model on the CPU, "
                                  f"heads a multiple of 32 long); use f16")
        self.model.kv_cache_type = kind
        self.prompt_cache.clear()  # its caches are of the other format

    def encode(self, text: str, special: bool = False) -> list[int]:
        """A prompt's token ids; `special`: control-token text (a rendered chat template) becomes those tokens."""
        return self.tokenizer.encode_prompt(text, special=special)

    def generate(self, prompt: str | list[int], max_new_tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stream: bool = True, min_p: float | None = None, repetition_penalty: float = 1.0,
                 stop: list[str] | None = None, special: bool = False, json_schema: dict | None = None,
                 grammar: str | None = None):
        """The continuation of `prompt` (text, or token ids): a `Generation` of text pieces with its stats
        (`stream=True`) or one string. Stops at the model's end tokens, at any of the `stop` strings, or after
        `max_new_tokens`. With a `json_schema` (`structured.ANY_OBJECT` for any JSON object) the text is JSON
        that validates against it, unless the token limit cuts it short (finish reason "length"); a `grammar`
        (llguidance's Lark syntax) constrains it the same way."""
        from firstepoch.llm import structured

        ids = list(prompt) if isinstance(prompt, list) else self.encode(prompt, special=special)
        sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty, seed=seed)
        constraint, vocab = None, self.model.config.vocab_size
        if json_schema is not None:
            constraint = structured.json_constraint(self.tokenizer, vocab, json_schema)
        elif grammar is not None:
            constraint = structured.lark_constraint(self.tokenizer, vocab, grammar)
        stats = GenerationStats(prompt_tokens=len(ids))
        generation = Generation(self._stream(ids, max_new_tokens, sampling, stop or [], stats, constraint), stats)
        return generation if stream else "".join(generation)

    def chat(self, messages: list[dict], stream: bool = True, **options):
        """The assistant's answer to `messages` ([{"role": "user", "content": "..."}, ...]), through the
        model's chat template."""
        return self.generate(self.render_chat(messages), stream=stream, special=True, **options)

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        from firstepoch.llm.chat import ChatTemplate

        if self.chat_template is None:
            self.chat_template = ChatTemplate(None, self.tokenizer, origin=self.config.get("source", "model"))
        return self.chat_template.render(messages, tools=tools)

    def _stream(self, ids: list[int], max_new_tokens: int, sampling: Sampling, stops: list[str],
                stats: GenerationStats, constraint=None) -> Iterator[str]:
        end_ids = set(self.tokenizer.end_ids)
        # decoded after the prompt's last token, so a SentencePiece "▁word" keeps its space (a decoder strips
        # the leading space of a whole text, not of a continuation)
        prefix = ids[-1:] if end_ids else []
        skip = len(self.tokenizer.decode(prefix)) if prefix else 0
        new: list[int] = []
        shown = ""
        started = time.perf_counter()
        # an LLM stops where its context ends, as llama.cpp does; a GPT of your own shifts its context
        if self.batcher is not None:  # a server's continuous batching: decoded beside the other requests
            tokens = self.batcher.submit(ids, max_new_tokens, sampling, end_ids, constraint)
        else:
            tokens = sample_tokens(self.model, ids, max_new_tokens, stop=end_ids, sampling=sampling,
                                   context_shift=not end_ids, cache=self.prompt_cache, constraint=constraint)
        try:
            for token in tokens:
                if not new:
                    stats.prompt_seconds = time.perf_counter() - started
                    stats.cached_tokens = (getattr(tokens, "cached", 0) if self.batcher is not None
                                           else self.prompt_cache.reused if end_ids else 0)
                    started = time.perf_counter()
                stats.completion_tokens += 1
                stats.decode_seconds = time.perf_counter() - started
                if token in end_ids:
                    stats.finish_reason = "stop"
                    break
                new.append(token)
                text = self.tokenizer.decode(prefix + new)[skip:]
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                window = max(0, len(shown) - max(map(len, stops), default=0))
                if found := [i for i in (text.find(s, window) for s in stops) if i >= 0]:
                    if min(found) > len(shown):
                        yield text[len(shown):min(found)]
                    stats.finish_reason = "stop"
                    return
                safe = len(text) - _held_back(text, stops)
                if safe > len(shown):
                    yield text[len(shown):safe]
                    shown = text[:safe]
            if constraint is not None and constraint.finished:
                stats.finish_reason = "stop"  # the structured text is complete
            if rest := self.tokenizer.decode(prefix + new)[skip:][len(shown):]:  # a half character, or held text
                yield rest
        finally:  # a generation closed early takes its tokens' source down with it (a batch slot, a cache)
            tokens.close()
