"""Text corpora and tokenizers for language models.

Two tokenizers, both lossless on any UTF-8 text: a character tokenizer over the corpus's characters with
a byte fallback for characters it never saw, and a byte-level BPE trained on the corpus with Hugging Face
`tokenizers`. Both save to JSON (`to_config` / `tokenizer_from_config`), which is how bundles carry them.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Protocol

from firstepoch.errors import FirstEpochError

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst"}


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    end_ids: frozenset[int]  # tokens that end a generation: none, a GPT of your own runs to its token limit
    bos_id: int | None  # the begin and end tokens a chat template may name: none for a GPT of your own
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def encode_prompt(self, text: str, special: bool = False) -> list[int]: ...  # as llm.generate's PromptTokenizer

    def decode(self, ids: list[int]) -> str: ...

    def to_config(self) -> dict: ...


class CharTokenizer:
    """One id per character of the training corpus; ids past those are the 256 byte values, so text
    with unseen characters still encodes (as their UTF-8 bytes) and decodes back exactly."""

    kind = "char"
    end_ids: frozenset[int] = frozenset()
    bos_id = eos_id = None

    def __init__(self, chars: str):
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 256

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        ids, base = [], len(self.chars)
        for ch in text:
            i = self._index.get(ch)
            if i is None:
                ids.extend(base + b for b in ch.encode("utf-8"))
            else:
                ids.append(i)
        return ids

    def encode_prompt(self, text: str, special: bool = False) -> list[int]:
        return self.encode(text)  # no special tokens, no BOS

    def decode(self, ids: list[int]) -> str:
        out, pending, base = [], bytearray(), len(self.chars)
        for i in ids:
            if i >= base:
                pending.append(i - base)
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            out.append(self.chars[i])
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_config(self) -> dict:
        return {"kind": "char", "chars": self.chars}

    @classmethod
    def from_config(cls, config: dict) -> "CharTokenizer":
        return cls(config["chars"])


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) trained on the corpus with Hugging Face `tokenizers`."""

    kind = "bpe"
    end_ids: frozenset[int] = frozenset()
    bos_id = eos_id = None

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int = 1024) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise FirstEpochError(f"a byte-level BPE needs vocab_size > 256 (the bytes), not {vocab_size}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str, special: bool = False) -> list[int]:
        return self.encode(text)  # no special tokens, no BOS

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def to_config(self) -> dict:
        return {"kind": "bpe", "tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_config(cls, config: dict) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(json.dumps(config["tokenizer"])))


def _chunks(text: str, size: int = 1 << 16):
    for start in range(0, len(text), size):
        yield text[start:start + size]


TOKENIZERS = {"char": CharTokenizer, "bpe": BPETokenizer}


def train_tokenizer(kind: str, text: str, vocab_size: int = 1024) -> Tokenizer:
    """A tokenizer of `kind` ("char" or "bpe") fitted to `text`."""
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise FirstEpochError(f"unknown tokenizer {kind!r}; choose from {', '.join(TOKENIZERS)}")


def tokenizer_from_config(config: dict) -> Tokenizer:
    kind = config.get("kind")
    if kind not in TOKENIZERS:
        raise FirstEpochError(f"unknown tokenizer kind {kind!r} in config; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].from_config(config)


def corpus_files(path: str | Path) -> list[Path]:
    """The file itself, or every .txt/.md/... file under a folder, sorted."""
    path = Path(path)
    if not path.exists():
        raise FirstEpochError(f"{path}: no such file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*")
                                                 if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise FirstEpochError(f"{path}: no text files ({', '.join(sorted(TEXT_SUFFIXES))}) in this folder")
    return files


def read_corpus(path: str | Path) -> str:
    """The text of a file, or of every .txt/.md file under a folder (sorted, joined by blank lines).

    Bytes that are not UTF-8 are replaced with U+FFFD and counted in one warning, never a crash.
    """
    texts, replaced = [], 0
    for f in corpus_files(path):
        raw = f.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        if "\ufffd" in text:
            replaced += text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
        texts.append(text)
    if replaced:
        warnings.warn(f"{path}: {replaced} byte sequence(s) were not UTF-8 and became U+FFFD", stacklevel=2)
    text = "\n\n".join(texts)
    if not text.strip():
        raise FirstEpochError(f"{path}: the corpus is empty; give a text file with some content")
    return text
