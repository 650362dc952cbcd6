"""Language-model data: a corpus tokenized once into a memory-mapped token file, read as windows.

Training windows start at offsets that are a pure function of (seed, epoch, index), so a resumed run
reads the same text; validation windows tile the last `valid_pct` of the corpus (split by position,
so no text leaks from training into validation). A corpus larger than memory is streamed in chunks.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from firstepoch.data.core import check_batch_size, make_loader, not_from_files
from firstepoch.data.text import Tokenizer, corpus_files, tokenizer_from_config, train_tokenizer
from firstepoch.errors import FirstEpochError

CHUNK_CHARS = 1 << 20
MAX_VALID_WINDOWS = 512


def _chunks(files: list[Path]):
    """The corpus as text chunks of about a megabyte, ending at line ends; undecodable bytes become U+FFFD."""
    for f in files:
        with open(f, encoding="utf-8", errors="replace", newline="") as fh:
            while chunk := fh.read(CHUNK_CHARS):
                chunk += fh.readline()
                yield chunk


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _train_tokenizer(kind: str, files: list[Path], vocab_size: int) -> Tokenizer:
    if kind == "char":  # one pass for the character set
        chars: set[str] = set()
        for chunk in _chunks(files):
            chars.update(chunk)
        return train_tokenizer("char", "".join(chars))
    sample = "".join(c for _, c in zip(range(64), _chunks(files)))  # BPE merges from the first 64 MB
    return train_tokenizer(kind, sample, vocab_size)


def tokenize_to_file(files: list[Path], tokenizer: Tokenizer, path: Path) -> np.memmap:
    """Encode the corpus chunk by chunk into `path` (uint16, or uint32 for big vocabularies)."""
    from firstepoch.core.io import atomic_open

    dtype = np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32
    replaced = 0
    with atomic_open(path) as f:
        for chunk in _chunks(files):
            replaced += chunk.count("\ufffd")
            f.write(np.asarray(tokenizer.encode(chunk), dtype=dtype).tobytes())
    if replaced:
        warnings.warn(f"{files[0].parent if len(files) > 1 else files[0]}: {replaced} character(s) were not "
                      f"valid UTF-8 and became U+FFFD", stacklevel=3)
    return np.memmap(path, dtype=dtype, mode="r")


def _mix(*values: int) -> int:
    """A 64-bit integer hash (splitmix64) of the values: cheap, seedable randomness per item."""
    x = 0
    for v in values:
        x = (x + v + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x


class TokenWindows(Dataset):
    """(input ids, next ids), each `context` long, from tokens[start:end] of the token file."""

    def __init__(self, tokens: np.ndarray, start: int, end: int, context: int, length: int,
                 seed: int | None = None):
        self.tokens, self.start, self.end, self.context = tokens, start, end, context
        self.length, self.seed = length, seed
        self.span = end - start - context - 1  # window starts lie in [0, span]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        if self.seed is None:  # validation: evenly spaced fixed windows
            offset = key * self.span // max(self.length - 1, 1)
        else:
            epoch, i = key
            offset = _mix(self.seed, epoch, i) % (self.span + 1)
        o = self.start + offset
        window = torch.from_numpy(self.tokens[o:o + self.context + 1].astype(np.int64))
        return window[:-1], window[1:]


class TextPreprocessor:
    """Text -> token ids (the prompt side of a language model), with the tokenizer saved in the bundle."""

    kind, takes_files = "text", False

    def __init__(self, tokenizer: Tokenizer, context: int):
        self.tokenizer, self.context = tokenizer, context

    def encode(self, item) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(item), dtype=torch.long)

    def to_config(self) -> dict:
        return {"kind": "text", "context": self.context, "tokenizer": self.tokenizer.to_config()}

    @classmethod
    def from_config(cls, config: dict) -> "TextPreprocessor":
        return cls(tokenizer_from_config(config["tokenizer"]), config["context"])

    def read_items(self, path: Path):
        raise not_from_files("text", path, "predict from")

    def read_labelled(self, path: Path, classes, task):
        raise not_from_files("text", path, "be evaluated on")


def text_parts(path, context: int = 64, tokenizer: str = "char", vocab_size: int = 1024,
              valid_pct: float = 0.1, seed: int = 42, batch_size: int = 12, steps_per_epoch: int = 250,
              cache_dir: str | Path | None = None) -> dict:
    """The fields of `DataLoaders.from_text`: next-token windows over a text file or a folder of .txt/.md files.

    Args:
        context: tokens per training window (the model's context length).
        tokenizer: "char" (characters, with a byte fallback) or "bpe" (byte-level BPE of `vocab_size`).
        valid_pct: the last part of the corpus, by position, held out for validation.
        steps_per_epoch: an epoch is this many batches of random windows.
        cache_dir: where the token file is kept (default: firstepoch's home folder).
    """
    from firstepoch.paths import home

    files = corpus_files(path)
    key = hashlib.sha256(json.dumps([_fingerprint(files), tokenizer, vocab_size]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir else home() / "tokens"
    tok_file, meta_file = cache / f"{key}.bin", cache / f"{key}.json"
    if tok_file.exists() and meta_file.exists():
        tok = tokenizer_from_config(json.loads(meta_file.read_text()))
        tokens = np.memmap(tok_file, dtype=np.uint16 if tok.vocab_size < 2**16 else np.uint32, mode="r")
    else:
        tok = _train_tokenizer(tokenizer, files, vocab_size)
        tokens = tokenize_to_file(files, tok, tok_file)
        from firstepoch.core.io import write_json

        write_json(tok.to_config(), meta_file)
    n = len(tokens)
    split = int(n * (1 - valid_pct))
    need = context + 1
    if split < need or n - split < need:
        raise FirstEpochError(f"{path}: {n} tokens, but {need} are needed in each of the train and valid splits "
                              f"(context {context} + 1); lower --context or give a longer text")
    valid_len = min(MAX_VALID_WINDOWS, max(1, (n - split) // context))
    bs = check_batch_size(batch_size, steps_per_epoch * batch_size, valid_len, str(path))
    train = TokenWindows(tokens, 0, split, context, steps_per_epoch * bs, seed=seed)
    valid = TokenWindows(tokens, split, n, context, valid_len)
    return dict(
        train=make_loader(train, bs, train=True, seed=seed, with_epoch=True),
        valid=make_loader(valid, bs, train=False, seed=seed),
        task="language_model", preprocessor=TextPreprocessor(tok, context), input_shape=[context],
        n_out=tok.vocab_size, fingerprint=key,
        info={"n_train": split, "n_valid": n - split, "tokens": n, "tokenizer": tok.kind,
              "vocab_size": tok.vocab_size, "source": str(path)})
