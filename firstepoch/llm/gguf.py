"""GGUF files: reading (checked header, memory-mapped tensors, the wrong files people download named for what
they are) and export of a firstepoch GPT as a `llama`-architecture GGUF that llama.cpp and Ollama run.

Export writes F32 weights under llama.cpp's tensor names. Queries and keys are permuted from the
rotate-half RoPE layout our Transformer uses to the interleaved layout llama.cpp applies to `llama`
models, and reading undoes it. Tokenizers: the character tokenizer becomes a SentencePiece-style vocabulary (one
piece per character, byte-fallback pieces `<0xNN>`, no merges, no space prefix), which llama.cpp then splits
exactly as we do; the byte-level BPE becomes a GPT-2 vocabulary with its merges.
"""
from __future__ import annotations

import ctypes
import math
import mmap
import os
import struct
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFValueType

from firstepoch.errors import FirstEpochError

SPM_SPACE = "\u2581"  # SentencePiece's visible space

# ---------------------------------------------------------------------------------------------- reading

# what a model file's tensors may be: the block types firstepoch multiplies as stored (llm/blocktypes.py), and
# the others the gguf package dequantizes (held as bf16), among them every type of llama.cpp's Q4_K_M, Q5_K_M and
# Q6_K mixtures (Q5_0, Q5_1 and Q8_0 rows where a dimension is not a multiple of 256)
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                   "Q6_K", "IQ4_NL", "IQ4_XS")
# the magics of the pre-GGUF formats, as their first four bytes read ('ggml', 'ggmf', 'ggjt', 'ggla' little-endian)
GGUF_MAGIC = b"GGUF"
_LEGACY_MAGICS = (b"lmgg", b"fmgg", b"tjgg", b"algg")


def _what_else(head: bytes, size: int) -> str | None:
    """What a file that should be GGUF is instead, from its first bytes; None when it is GGUF."""
    if head[:4] == GGUF_MAGIC:
        return None
    if head.startswith(b"version https://git-lfs"):
        return (f"a git-LFS pointer ({size} bytes), not the model itself: run `git lfs pull` in its repository, "
                f"or download the file through its direct link")
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return ("an HTML page, not a model: the download saved a web page; use the file's direct download "
                "link (on Hugging Face: .../resolve/main/NAME.gguf)")
    if head[:4] in _LEGACY_MAGICS:
        return ("a legacy GGML model from before GGUF (2023): convert it with llama.cpp's "
                "convert_llama_ggml_to_gguf.py, or download a .gguf version")
    if head[:4] == b"FUGG":
        return "a big-endian GGUF file; only little-endian GGUF files are supported"
    return f"not a GGUF file (it starts with {head[:8]!r}); firstepoch reads GGUF v2 and v3 models"


@dataclass
class GGUFFile:
    """A GGUF file's header, read and checked: metadata as Python values and memory-mapped tensors."""

    path: Path
    version: int
    metadata: dict
    tensors: dict = field(repr=False)  # name -> TensorInfo (data is a view into the mapped file)
    types: dict = field(default_factory=dict, repr=False)  # metadata name -> its GGUFValueType(s), for rewriting

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "?")

    def arch(self, key: str, default=None):
        """The architecture's own key, e.g. `arch("block_count")` reads `llama.block_count`."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def quantization(self) -> str:
        """The mixture the file declares (general.file_type, as llama.cpp names it: 'Q4_K_M'), else the most
        common weight type among the matrices, e.g. 'Q4_1'."""
        from collections import Counter

        from gguf import LlamaFileType

        declared, names = self.metadata.get("general.file_type"), LlamaFileType._value2member_map_
        if isinstance(declared, int) and not isinstance(declared, bool) and declared in names:
            name = names[declared].name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_") if name != "GUESSED" else "?"
        kinds = Counter(t.tensor_type.name for t in self.tensors.values() if len(t.shape) == 2)
        return kinds.most_common(1)[0][0] if kinds else "?"

    @property
    def n_bytes(self) -> int:
        return sum(int(t.n_bytes) for t in self.tensors.values())


def read_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF file (v2 or v3) and check it before any tensor is touched.

    Wrong files (an HTML page, a git-LFS pointer, a legacy GGML file), an unsupported tensor type, a
    truncated file: one `FirstEpochError` line each, saying what the file is and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FirstEpochError(f"{path}: no such model file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if problem := _what_else(head, size):
        raise FirstEpochError(f"{path}: {problem}")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise FirstEpochError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    try:
        metadata, types, tensors = _read_header(path, size)
    except (struct.error, ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise FirstEpochError(f"{path}: truncated or corrupt GGUF header ({str(exc)[:160]}); download it again") \
            from None
    for t in tensors.values():
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise FirstEpochError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which is not supported; "
                                  f"supported types: {', '.join(SUPPORTED_TYPES)}")
        if t.data_offset + t.n_bytes > size:
            raise FirstEpochError(f"{path}: the file is truncated ({size:,} bytes, tensor {t.name} ends at "
                                  f"{t.data_offset + t.n_bytes:,}); download it again")
    return GGUFFile(path, version, metadata, tensors, types)


@dataclass
class TensorInfo:
    """One tensor of a GGUF file: where its bytes are, and a view of them in the memory-mapped file."""

    name: str
    shape: tuple  # GGUF's order: the fastest-varying dimension first
    tensor_type: object  # gguf.GGMLQuantizationType
    data_offset: int
    n_elements: int
    n_bytes: int
    mapped: np.ndarray = field(repr=False)  # the whole file, mapped copy-on-write

    @property
    def data(self) -> np.ndarray:
        """The tensor's bytes (uint8), one row a line for matrices; pages are read only when touched."""
        flat = self.mapped[self.data_offset:self.data_offset + self.n_bytes]
        return flat.reshape(int(self.shape[1]), -1) if len(self.shape) == 2 else flat

    def release(self) -> None:
        """Hand this tensor's pages of the mapping back to the OS, once a copy of it is in use: memory then holds
        the copy only (the pages would be read from the file again if touched)."""
        _forget_pages(self.mapped.ctypes.data + self.data_offset, self.n_bytes)


def _forget_pages(address: int, length: int) -> None:
    """madvise(MADV_DONTNEED) on the whole pages inside [address, address + length), where libc has it."""
    libc = _libc()
    if libc is None:
        return
    page = mmap.PAGESIZE
    start, end = -(-address // page) * page, (address + length) // page * page
    if end > start:
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


@cache
def _libc():
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


_V = GGUFValueType
_NUMPY = {_V.UINT8: np.uint8, _V.INT8: np.int8, _V.UINT16: np.uint16, _V.INT16: np.int16, _V.UINT32: np.uint32,
          _V.INT32: np.int32, _V.FLOAT32: np.float32, _V.BOOL: np.bool_, _V.UINT64: np.uint64, _V.INT64: np.int64,
          _V.FLOAT64: np.float64}
_SCALARS = {_V.UINT8: "<B", _V.INT8: "<b", _V.UINT16: "<H", _V.INT16: "<h", _V.UINT32: "<I", _V.INT32: "<i",
            _V.FLOAT32: "<f", _V.BOOL: "<?", _V.UINT64: "<Q", _V.INT64: "<q", _V.FLOAT64: "<d"}  # struct formats
_STRING, _ARRAY = _V.STRING, _V.ARRAY
MAX_NESTING = 4  # arrays of arrays: real files nest one deep; llama.cpp's reader refuses any nesting
MAX_DIMS = 4  # ggml's tensors have at most four dimensions
# entries of one metadata array: the largest real ones are vocabularies (Gemma's 262,144 tokens) and their
# merges; as Python objects each entry costs about ten times its bytes in the file, so a file cannot ask for more
MAX_ARRAY = 1 << 22
_ALIGNMENT_TYPE = _V.UINT32  # general.alignment's type


class _Corrupt(ValueError):
    """The header says something its bytes cannot back; read_gguf names the file and says to download it again."""


def _read_header(path: Path, size: int) -> tuple[dict, dict, dict]:
    """(metadata, value types, tensors) of a GGUF file: see `_HeaderReader`."""
    return _HeaderReader(path, size).read()


class _HeaderReader:
    """Reads a GGUF header straight from its bytes: strings and numbers as Python values (arrays of numbers
    through numpy at once), tensors as `TensorInfo`s over one mapping. Lean on purpose: a tokenizer's 50k-entry
    arrays cost a few MB here, not the hundreds of MB that per-item objects would. Every count, length and
    shape is checked against the file's size before it is used, so a header that lies cannot make the reader
    allocate, loop or recurse beyond what the file holds."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size
        self.mapped = np.memmap(path, dtype=np.uint8, mode="c")
        self.at = 8  # after the magic and the version

    def read(self) -> tuple[dict, dict, dict]:
        n_tensors = self.take("<Q")
        n_values = self.count("the metadata", 8 + 4 + 1)  # a key's length, its type, a one-byte value
        if n_tensors * (8 + 4 + 4 + 8) > self.size - self.at:
            raise _Corrupt(f"the header claims {n_tensors:,} tensors, more than the file's {self.size:,} bytes "
                           f"can hold")
        metadata, types = {}, {}
        for _ in range(n_values):
            key = self.string()
            if key in metadata:
                raise _Corrupt(f"the metadata key {key!r} appears twice")
            types[key] = []
            metadata[key] = self.value(self.take("<I"), types[key])
        entries = [self.tensor_entry() for _ in range(n_tensors)]
        alignment = self.alignment(metadata, types)
        start = (self.at + alignment - 1) // alignment * alignment
        tensors = {}
        for name, shape, kind, offset in entries:
            if name in tensors:
                raise _Corrupt(f"tensor {name} appears twice")
            tensors[name] = self.tensor(name, shape, kind, start, offset, alignment)
        return metadata, types, tensors

    # ---------------------------------------------------------------------------------------- values

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.mapped, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def count(self, what: str, smallest_item: int, most: int | None = None) -> int:
        """A count of entries that follow, each at least `smallest_item` bytes: no more than the file holds."""
        n = self.take("<Q")
        if most is not None and n > most:
            raise _Corrupt(f"{what} claims {n:,} entries (at most {most:,} are read)")
        if n * smallest_item > self.size - self.at:
            raise _Corrupt(f"{what} claims {n:,} entries, more than the file's {self.size:,} bytes can hold")
        return n

    def string(self) -> str:
        n = self.count("a string", 1)
        self.at += n
        return bytes(self.mapped[self.at - n:self.at]).decode("utf-8")

    def value(self, kind: int, types: list, depth: int = 0):
        """One metadata value of type `kind`; its type (and an array's item type) appended to `types`."""
        if kind not in _SCALARS and kind not in (_STRING, _ARRAY):
            raise _Corrupt(f"unknown metadata value type {kind}")
        types.append(_V(kind))
        if kind == _STRING:
            return self.string()
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if depth >= MAX_NESTING:
            raise _Corrupt(f"arrays nested more than {MAX_NESTING} deep")
        item = self.take("<I")
        if item not in _SCALARS and item not in (_STRING, _ARRAY):
            raise _Corrupt(f"unknown metadata value type {item}")
        if item in _NUMPY:
            width = np.dtype(_NUMPY[item]).itemsize
            n = self.count("an array", width, MAX_ARRAY)
            types.append(_V(item))
            self.at += n * width
            return np.frombuffer(self.mapped, _NUMPY[item], n, self.at - n * width).tolist()
        n = self.count("an array", 8 if item == _STRING else 12, MAX_ARRAY)  # a string's length, an array's head
        items, inner = [], []
        for _ in range(n):
            items.append(self.value(item, inner, depth + 1))
        types.append(inner[0] if inner else _V(item))
        return items

    # ---------------------------------------------------------------------------------------- tensors

    def tensor_entry(self) -> tuple[str, tuple, int, int]:
        name = self.string()
        n_dims = self.take("<I")
        if n_dims > MAX_DIMS:
            raise _Corrupt(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
        shape = tuple(self.take("<Q") for _ in range(n_dims))
        return name, shape, self.take("<I"), self.take("<Q")

    @staticmethod
    def alignment(metadata: dict, types: dict) -> int:
        alignment = metadata.get("general.alignment", 32)
        declared = types.get("general.alignment", [_ALIGNMENT_TYPE])[0]
        if declared != _ALIGNMENT_TYPE or not isinstance(alignment, int) or alignment <= 0 or \
                alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment is {alignment!r}; it must be a power of two (a uint32)")
        return alignment

    def tensor(self, name: str, shape: tuple, kind: int, start: int, offset: int, alignment: int) -> TensorInfo:
        """One tensor's entry, checked: a known type, a whole number of blocks, aligned data within the file."""
        import gguf

        try:
            qtype = gguf.GGMLQuantizationType(kind)
        except ValueError:
            raise FirstEpochError(f"{self.path}: tensor {name} has an unknown type ({kind}); supported types: "
                                  f"{', '.join(SUPPORTED_TYPES)}") from None
        elements = math.prod(shape)  # Python integers: a product that would overflow 64 bits is just large
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if any(n == 0 for n in shape):
            raise _Corrupt(f"tensor {name} has an empty dimension ({list(shape)})")
        if elements > self.size * block:
            raise _Corrupt(f"tensor {name} has shape {list(shape)}, more than the file's {self.size:,} bytes "
                           f"can hold")
        if shape and shape[0] % block:
            raise _Corrupt(f"tensor {name}: its rows of {shape[0]} values are not whole {qtype.name} blocks of "
                           f"{block}")
        if offset % alignment:
            raise _Corrupt(f"tensor {name}'s data is not aligned to {alignment} bytes")
        return TensorInfo(name, shape, qtype, start + offset, elements, elements // block * type_size, self.mapped)


def tensor_array(t) -> np.ndarray:
    """A tensor of a GGUF file as float32 (rows, columns), dequantized by the gguf package."""
    from gguf.quants import dequantize

    rows = [int(n) for n in reversed(t.shape)]  # GGUF lists dimensions fastest first
    return dequantize(t.data, t.tensor_type).reshape(rows)


def from_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo `_to_interleaved`: llama.cpp's q/k rows back to the rotate-half layout of our Transformer."""
    out_features = weight.shape[0]
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(out_features, -1)

# ---------------------------------------------------------------------------------------------- writing


def _to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * head_dim, dim) rows of rotate-half pairs (i, i + half) -> interleaved pairs (2i, 2i + 1)."""
    out_features = weight.shape[0]
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(out_features, -1)


def _tensors(model) -> dict[str, np.ndarray]:
    """Every weight of a GPT under its GGUF name, as fp32 arrays; queries and keys permuted for llama.cpp."""
    from firstepoch.llm.names import GGUF, weight_shapes

    c, state = model.config, model.state_dict()
    heads = {"attn.q_proj": c.n_heads, "attn.k_proj": c.n_kv_heads}
    out = {}
    for ours in weight_shapes(c):
        weight = state[f"{ours}.weight"].detach().float().cpu()
        if n_heads := heads.get(ours.split(".", 2)[-1]):
            weight = _to_interleaved(weight, n_heads)
        out[GGUF.theirs(ours)] = weight.contiguous().numpy()
    return out


def _char_vocab(writer, tokenizer) -> None:
    from gguf import TokenType

    if SPM_SPACE in tokenizer.chars:
        raise FirstEpochError(f"the corpus contains {SPM_SPACE!r}, which a SentencePiece vocabulary uses for spaces; "
                              f"retrain with --tokenizer bpe to export this model to GGUF")

    pieces = [SPM_SPACE if ch == " " else ch for ch in tokenizer.chars] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.NORMAL] * len(tokenizer.chars) + [TokenType.BYTE] * 256
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores([0.0] * len(pieces))
    writer.add_token_types(types)
    never = len(tokenizer.chars)  # the byte 0x00 piece: no text trains it, so it stands for BOS/EOS/UNK
    writer.add_bos_token_id(never)
    writer.add_eos_token_id(never)
    writer.add_unk_token_id(never)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def _bpe_vocab(writer, tokenizer) -> None:
    import json

    from gguf import TokenType

    model = json.loads(tokenizer._tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([TokenType.NORMAL] * len(vocab))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def export_gguf(lm, path: str | Path, name: str = "firstepoch-gpt") -> Path:
    """Write the `LanguageModel` `lm` (a loaded GPT bundle) to a GGUF file at `path`, atomically."""
    try:
        import gguf
    except ImportError as exc:
        raise FirstEpochError("GGUF export needs the 'gguf' package: pip install gguf") from exc
    c = lm.model.config
    path = Path(path)
    writer_target = path.with_name(f".{path.name}.partial")
    writer = gguf.GGUFWriter(str(writer_target), arch="llama")
    writer.add_name(name)
    writer.add_context_length(c.context)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    {"char": _char_vocab, "bpe": _bpe_vocab}[lm.tokenizer.kind](writer, lm.tokenizer)
    for tensor_name, array in _tensors(lm.model).items():
        writer.add_tensor(tensor_name, array)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(writer_target, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(writer_target, path)  # a reader sees the old file or the whole new one
    finally:
        writer_target.unlink(missing_ok=True)
    return path
