"""The tokenizer an LLM declares, built with Hugging Face `tokenizers` so that its ids equal llama.cpp's.

From GGUF metadata (`tokenizer.ggml.*`): the GPT-2-style byte-level BPE (SmolLM2, Llama 3, Qwen2), with
the pre-tokenizer regexes llama.cpp uses for the declared `tokenizer.ggml.pre`, and the SentencePiece-style
vocabulary of Llama 2 (pieces with scores, `▁` for spaces, `<0xNN>` byte fallback), whose merges follow
from the scores.
"""
from __future__ import annotations

import warnings

from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from firstepoch.errors import FirstEpochError

NORMAL, CONTROL, USER_DEFINED = TokenType.NORMAL, TokenType.CONTROL, TokenType.USER_DEFINED

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# tokenizer.ggml.pre -> the regexes llama.cpp splits text with, applied one after another
PRE_TOKENIZERS = {
    "default": [_GPT2], "gpt-2": [_GPT2], "gpt2": [_GPT2],
    "smollm": [r"\p{N}", _GPT2], "starcoder": [r"\p{N}", _GPT2], "refact": [r"\p{N}", _GPT2],
    "llama3": [_LLAMA3], "llama-bpe": [_LLAMA3], "smaug-bpe": [_LLAMA3],
    "qwen2": [_QWEN2], "qwen35": [_QWEN2],
}
# end-of-generation tokens that llama.cpp recognises by their text when the file does not declare them
END_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "</s>",
             "<|end_of_text|>", "<EOT>", "_<EOT>"}


class LLMTokenizer:
    """Text <-> token ids for an LLM, with its special tokens and BOS/EOS conventions.

    `encode(text, special=False)` treats control-token text (`<|im_start|>`) as plain text, as llama.cpp
    does by default; `special=True` turns it into the control tokens (for rendered chat templates).
    """

    def __init__(self, plain: Tokenizer, special: Tokenizer, bos_id: int | None, eos_id: int | None,
                 add_bos: bool, end_ids: set[int]):
        self._plain, self._special = plain, special
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.end_ids = end_ids
        self.vocab_size = special.get_vocab_size()
        # no text longer than this times its token count can encode to that many tokens (a server's bound)
        self.max_token_chars = max(map(len, special.get_vocab()), default=1)

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        ids = (self._special if special else self._plain).encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def encode_prompt(self, text: str, special: bool = False) -> list[int]:
        """A prompt's ids: BOS first where the model wants one, unless `text` is a rendered chat template
        (`special`) that starts with the BOS text already."""
        bos_text = self.token_text(self.bos_id) if self.bos_id is not None else None
        add_bos = self.add_bos and not (special and bos_text and text.startswith(bos_text))
        return self.encode(text, add_bos=add_bos, special=special)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._special.decode(ids, skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str:
        return self._special.id_to_token(token_id) or ""

    def definition(self) -> str:
        """The whole tokenizer as Hugging Face's tokenizer.json text (what llguidance builds its vocabulary from)."""
        return self._special.to_str()

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text`, or None when there is none."""
        return self._special.token_to_id(text)

    @classmethod
    def from_gguf(cls, metadata: dict, source: str = "model") -> "LLMTokenizer":
        """The tokenizer a GGUF file's metadata declares, every entry checked first (the file may lie)."""
        kind, tokens, types = _checked_vocabulary(metadata, source)
        try:
            if kind == "gpt2":
                plain, special = _byte_level_bpe(metadata, tokens, types, source)
            else:
                plain, special = _sentencepiece(metadata, tokens, types)
        except FirstEpochError:
            raise
        except Exception as exc:  # the tokenizers library refusing what the checks let through
            raise FirstEpochError(f"{source}: the tokenizer in the file cannot be built ({str(exc)[:160]})") from None
        bos, eos, eot, eom = (_token_id(metadata, f"tokenizer.ggml.{name}_token_id", len(tokens), source)
                              for name in ("bos", "eos", "eot", "eom"))
        add_bos = metadata.get("tokenizer.ggml.add_bos_token", kind == "llama")
        ends = {i for i in (eos, eot, eom) if i is not None}
        ends |= {i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == CONTROL and t in END_TEXTS}
        return cls(plain, special, bos, eos, bool(add_bos), ends)


# the characters of all tokens together: a real vocabulary has a few million at most, and building the merges
# of a SentencePiece vocabulary costs time in proportion to this
MAX_VOCABULARY_CHARS = 1 << 24


def _checked_vocabulary(metadata: dict, source: str) -> tuple[str, list[str], list[int]]:
    """(model kind, tokens, token types) of the file, each of the right type and length, or one clear line."""
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise FirstEpochError(f"{source}: the GGUF file has no tokenizer (tokenizer.ggml.tokens)")
    if kind not in ("gpt2", "llama"):
        raise FirstEpochError(f"{source}: tokenizer model {str(kind)[:40]!r} is not supported (gpt2 and llama are)")
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise FirstEpochError(f"{source}: tokenizer.ggml.tokens must be a list of non-empty strings")
    if sum(map(len, tokens)) > MAX_VOCABULARY_CHARS:
        raise FirstEpochError(f"{source}: the tokens total more than {MAX_VOCABULARY_CHARS:,} characters; "
                              f"the file is corrupt")
    types = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    _check_list(types, int, len(tokens), "tokenizer.ggml.token_type", source)
    if kind == "llama" and metadata.get("tokenizer.ggml.scores") is not None:
        _check_list(metadata["tokenizer.ggml.scores"], (int, float), len(tokens), "tokenizer.ggml.scores", source)
    merges = metadata.get("tokenizer.ggml.merges", [])
    if kind == "gpt2" and not (isinstance(merges, list) and all(isinstance(m, str) and " " in m for m in merges)):
        raise FirstEpochError(f"{source}: tokenizer.ggml.merges must be a list of 'left right' strings")
    if not isinstance(metadata.get("tokenizer.ggml.pre", "default"), str):
        raise FirstEpochError(f"{source}: tokenizer.ggml.pre must be a string")
    if kind == "llama":
        _token_id(metadata, "tokenizer.ggml.unknown_token_id", len(tokens), source)
    return kind, tokens, types


def _check_list(values, kind, length: int, name: str, source: str) -> None:
    if not isinstance(values, list) or len(values) != length or \
            not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise FirstEpochError(f"{source}: {name} must hold one number per token ({length:,})")


def _token_id(metadata: dict, key: str, n_tokens: int, source: str) -> int | None:
    """A special token's id from the metadata: None when absent, one clear line when not a token of the file."""
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_tokens:
        raise FirstEpochError(f"{source}: {key} is {repr(value)[:40]}, not a token id of its {n_tokens:,} tokens")
    return value


def _add_tokens(tok: Tokenizer, tokens: list[str], types: list[int], wanted: tuple[int, ...]) -> None:
    """Match the tokens of the wanted types whole in raw text: user-defined ones (Gemma's "\n\n") as text that
    decoding keeps, control ones (<|im_end|>) as special tokens that `skip_special` drops."""
    chosen = [(t, ty) for t, ty in zip(tokens, types) if ty in wanted]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in chosen if ty != CONTROL])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in chosen if ty == CONTROL])


def _byte_level_bpe(metadata: dict, tokens: list[str], types: list[int], source: str):
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        warnings.warn(f"{source}: pre-tokenizer {pre!r} is not known to firstepoch; using GPT-2's, so token ids "
                      f"may differ from llama.cpp's", stacklevel=3)
    regexes = PRE_TOKENIZERS.get(pre, [_GPT2])
    vocab = {t: i for i, t in enumerate(tokens)}

    def build(specials: tuple[int, ...]) -> Tokenizer:
        tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=pre.startswith("llama")))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        _add_tokens(tok, tokens, types, specials)
        return tok

    # user-defined tokens are always matched in text; control tokens only when asked (llama.cpp's `special`)
    return build((USER_DEFINED,)), build((USER_DEFINED, CONTROL))


def _sentencepiece(metadata: dict, tokens: list[str], types: list[int]):
    scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    # SentencePiece BPE merges the adjacent pair whose merged piece scores highest: the merges, by that score
    candidates = []
    for piece, index in vocab.items():
        if types[index] not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                candidates.append((-scores[index], index, left, right))
    merges = [(left, right) for _, _, left, right in sorted(candidates)]
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id") or 0  # checked by _checked_vocabulary
    space_prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)

    def build(specials: tuple[int, ...]) -> Tokenizer:
        tok = Tokenizer(models.BPE(vocab, merges, unk_token=tokens[unk_id], byte_fallback=True, fuse_unk=True))
        steps = [normalizers.Prepend("\u2581")] if space_prefix else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
        tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
            + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
        _add_tokens(tok, tokens, types, specials)
        return tok

    return build((USER_DEFINED,)), build((USER_DEFINED, CONTROL))

