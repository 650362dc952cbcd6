"""Structured output: text that always parses as JSON, and validates against a JSON schema when one is given.

The grammar is enforced while sampling: before each token is picked, every token that could not continue a text
of the grammar is masked out of the logits, and the token picked then advances the grammar's state. The grammar
and the mask over the tokenizer's vocabulary are llguidance's (the library llama.cpp offers for the same), built
from the tokenizer's own definition, so multi-byte tokens, byte fallback and special tokens are all handled; its
parser limits bound the time and memory any schema can take (a hostile schema is refused, it cannot stall).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from firstepoch.errors import FirstEpochError

# a schema is a request's field: past this size it is refused before anything compiles it
MAX_SCHEMA_CHARS = 64_000
ANY_OBJECT = {"type": "object"}  # OpenAI's json_object mode and Ollama's format "json"
# compact JSON: a small model given free whitespace tends to spend its tokens on newlines
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _one_line(message: str) -> str:
    return " ".join(message.split())[:200]  # llguidance's messages can span lines (a regex error's caret)


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise FirstEpochError("structured output needs the llguidance package: pip install llguidance") from None
    return llguidance


def guidance_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of an LLM tokenizer (built once per tokenizer: about 0.3 s for 49k tokens)."""
    cached = getattr(tokenizer, "_guidance", None)
    if cached is not None and cached.vocab_size == vocab_size:
        return cached
    definition = getattr(tokenizer, "definition", None)
    if definition is None:
        raise FirstEpochError("structured output needs an LLM's tokenizer (a GGUF or Hugging Face model)")
    built = _llguidance().LLTokenizer(definition(), n_vocab=vocab_size, eos_token=sorted(tokenizer.end_ids))
    tokenizer._guidance = built
    return built


class Constraint:
    """A grammar's state during one generation: `mask(logits)` rules out the tokens it does not allow next,
    `advance(token)` consumes the one picked; `finished` once the text is complete (nothing but its end may
    follow)."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.from_numpy(bits[:logits.shape[-1]].astype(bool)).to(logits.device)
        if not bool(allowed.any()):  # cannot happen while only allowed tokens are consumed; stop rather than guess
            raise FirstEpochError(f"the output grammar allows no next token ({_one_line(self.matcher.get_error())})")
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped()


def json_constraint(tokenizer, vocab_size: int, schema: dict | None, field: str = "response_format") -> Constraint:
    """A `Constraint` for JSON that validates against `schema` (a dict; `ANY_OBJECT` for any JSON object).
    A schema that is too large, not an object or not one llguidance can compile is a `FirstEpochError` naming
    `field` (the request's field it came from)."""
    if not isinstance(schema, dict):
        raise FirstEpochError(f"{field}: the JSON schema must be an object, not {type(schema).__name__}")
    try:
        text = json.dumps(schema)
    except (RecursionError, TypeError, ValueError):
        raise FirstEpochError(f"{field}: the JSON schema is nested too deeply or holds values that are not "
                              f"JSON") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise FirstEpochError(f"{field}: the JSON schema has {len(text):,} characters, more than "
                              f"{MAX_SCHEMA_CHARS:,}; simplify it")
    llguidance = _llguidance()
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, defaults=COMPACT)
    except ValueError as exc:
        raise FirstEpochError(f"{field}: the JSON schema cannot be read ({_one_line(str(exc))})") from None
    return _matcher(tokenizer, vocab_size, grammar, f"{field}: the JSON schema")


def lark_constraint(tokenizer, vocab_size: int, lark: str, what: str = "the grammar") -> Constraint:
    """A `Constraint` for the texts of a grammar in llguidance's Lark syntax (`%json {...}` inside it takes a JSON
    schema), which firstepoch writes itself (llm.tools: a template's tool-call syntax)."""
    llguidance = _llguidance()
    try:
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    except ValueError as exc:
        raise FirstEpochError(f"{what} cannot be read ({_one_line(str(exc))})") from None
    return _matcher(tokenizer, vocab_size, grammar, what)


def _matcher(tokenizer, vocab_size: int, grammar, what: str) -> Constraint:
    matcher = _llguidance().LLMatcher(guidance_tokenizer(tokenizer, vocab_size), grammar, log_level=0)
    if matcher.is_error():
        raise FirstEpochError(f"{what} cannot be used ({_one_line(matcher.get_error())})")
    return Constraint(matcher, vocab_size)
