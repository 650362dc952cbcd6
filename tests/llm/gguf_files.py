"""GGUF files for the hostile-input tests: a tiny valid llama model written with the gguf package, and a writer
of raw GGUF bytes that can say anything (wrong types, counts, shapes, offsets), so each lie a downloaded file
may tell can be built on purpose."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

gguf = __import__("gguf")

# 3 specials, 256 byte pieces, 6 pieces: 265 tokens
PIECES = ["\u2581", "\u2581t", "he", "\u2581the", "a", "b"]
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES
TYPES = [2, 3, 3] + [6] * 256 + [1] * len(PIECES)
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
DIM, LAYERS, HEADS, KV_HEADS, HIDDEN = 64, 2, 4, 2, 128


# what each architecture's tiny model adds to the llama one: metadata and tensors (see llm/architectures.py)
ARCH_HEAD = {"gemma3": 32}  # a head size other than DIM / HEADS (Gemma 3 270M has 256 for a width of 640)
WINDOW = 8  # the sliding window of the Gemmas' local layers: prompts of 100 tokens see it


def tensors(seed: int = 0, arch: str = "llama") -> dict[str, tuple[np.ndarray, object]]:
    """name -> (fp32 values in (rows, columns), GGUF type) of the tiny model: Q8_0 and Q4_0 matrices, F32
    vectors; norms and biases random, so that reading one wrongly shows in the logits."""
    rng = np.random.default_rng(seed)
    head = ARCH_HEAD.get(arch, DIM // HEADS)
    q8, q4, f32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.F32

    def matrix(rows: int, columns: int) -> np.ndarray:
        return (rng.standard_normal((rows, columns)) / np.sqrt(columns)).astype(np.float32)

    def norm(n: int) -> tuple[np.ndarray, object]:
        values = np.ones(n) if arch == "llama" else 1 + 0.3 * rng.standard_normal(n)  # llama's: as before
        return values.astype(np.float32), f32

    out = {"token_embd.weight": (matrix(len(TOKENS), DIM), q8), "output_norm.weight": norm(DIM)}
    for i in range(LAYERS):
        out.update({f"blk.{i}.attn_norm.weight": norm(DIM), f"blk.{i}.ffn_norm.weight": norm(DIM),
                    f"blk.{i}.attn_q.weight": (matrix(HEADS * head, DIM), q8),
                    f"blk.{i}.attn_k.weight": (matrix(KV_HEADS * head, DIM), q8),
                    f"blk.{i}.attn_v.weight": (matrix(KV_HEADS * head, DIM), q8),
                    f"blk.{i}.attn_output.weight": (matrix(DIM, HEADS * head), q4),
                    f"blk.{i}.ffn_gate.weight": (matrix(HIDDEN, DIM), q4),
                    f"blk.{i}.ffn_up.weight": (matrix(HIDDEN, DIM), q4),
                    f"blk.{i}.ffn_down.weight": (matrix(DIM, HIDDEN), q8)})
        if arch == "qwen2":
            for name, n in (("q", HEADS * head), ("k", KV_HEADS * head), ("v", KV_HEADS * head)):
                out[f"blk.{i}.attn_{name}.bias"] = (0.5 * rng.standard_normal(n).astype(np.float32), f32)
        if arch in ("qwen3", "gemma3"):
            out.update({f"blk.{i}.attn_q_norm.weight": norm(head), f"blk.{i}.attn_k_norm.weight": norm(head)})
        if arch.startswith("gemma"):
            out.update({f"blk.{i}.post_attention_norm.weight": norm(DIM), f"blk.{i}.post_ffw_norm.weight": norm(DIM)})
        if arch == "phi3":  # q, k, v in one tensor; gate and up in ffn_up
            out[f"blk.{i}.attn_qkv.weight"] = (np.concatenate([out.pop(f"blk.{i}.attn_{n}.weight")[0]
                                                               for n in "qkv"]), q8)
            out[f"blk.{i}.ffn_up.weight"] = (np.concatenate([out.pop(f"blk.{i}.ffn_gate.weight")[0],
                                                             out[f"blk.{i}.ffn_up.weight"][0]]), q4)
    return out


def tiny_model(path: Path, seed: int = 0, rope_freqs: np.ndarray | None = None, arch: str = "llama",
               long_rope: tuple | None = None) -> Path:
    """A valid 2-layer GGUF of architecture `arch` (dim 64, 4 heads, 2 kv heads, 265 tokens) written by the gguf
    package; with `rope_freqs` (head_dim / 2 factors), Llama 3.1's rope_freqs tensor too; with `long_rope`
    ((short factors, long factors, original context, attention factor)), LongRoPE's tensors and keys as Phi-3's
    128k files hold them. The Gemmas' layer 0 is local (a window of `WINDOW` positions), layer 1 global."""
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(DIM)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(HIDDEN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    head = ARCH_HEAD.get(arch, DIM // HEADS)
    writer.add_rope_dimension_count(head)
    writer.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    if head != DIM // HEADS:
        writer.add_key_length(head)
        writer.add_value_length(head)
    if arch.startswith("gemma"):
        writer.add_sliding_window(WINDOW)
        writer.add_sliding_window_pattern(2)  # layer 0 local, layer 1 global
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(5.0)  # low enough to cap the tiny model's scores and logits
        writer.add_final_logit_softcapping(3.0)
    if arch == "gemma3":
        writer.add_rope_freq_base(1e6)  # the global layers'; the local ones keep 10000
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(PIECES))])
    writer.add_token_types(TYPES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(TEMPLATE)
    items = tensors(seed, arch)
    if rope_freqs is not None:
        items["rope_freqs.weight"] = (np.asarray(rope_freqs, np.float32), gguf.GGMLQuantizationType.F32)
    if long_rope is not None:
        short, long, original, attn_factor = long_rope
        items["rope_factors_short.weight"] = (np.asarray(short, np.float32), gguf.GGMLQuantizationType.F32)
        items["rope_factors_long.weight"] = (np.asarray(long, np.float32), gguf.GGMLQuantizationType.F32)
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_rope_scaling_attn_factors(attn_factor)
    for name, (values, qtype) in items.items():
        data = gguf.quants.quantize(values, qtype) if qtype != gguf.GGMLQuantizationType.F32 else values
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------------------------------- raw bytes

STRING, ARRAY = 8, 9
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def value_bytes(kind: int, value) -> bytes:
    """One metadata value of GGUF type `kind`; an array is (item type, [values])."""
    if kind == STRING:
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(data)) + data
    if kind == ARRAY and isinstance(value, bytes):  # already encoded (item type, count, items)
        return value
    if kind == ARRAY:
        item, values = value
        return struct.pack("<IQ", item, len(values)) + b"".join(value_bytes(item, v) for v in values)
    if kind not in SCALARS:  # a type GGUF does not have: the bytes as given
        return bytes(value)
    return struct.pack(SCALARS[kind], value)


class RawGGUF:
    """A GGUF file as editable parts: metadata [(key, type, value)], tensors [(name, shape, type, data)]."""

    def __init__(self, metadata: list, tensors: list, version: int = 3, alignment: int = 32):
        self.metadata, self.tensors, self.version, self.alignment = metadata, tensors, version, alignment

    @classmethod
    def from_file(cls, path: Path) -> "RawGGUF":
        """The parts of a file our reader accepts, to edit and write again."""
        from firstepoch.llm.gguf import read_gguf

        g = read_gguf(path)
        metadata = []
        for key, types in g.types.items():
            kind, value = int(types[0]), g.metadata[key]
            metadata.append((key, kind, (int(types[1]), value) if kind == ARRAY else value))
        tensors = [(t.name, tuple(int(n) for n in t.shape), int(t.tensor_type), bytes(t.mapped[
            t.data_offset:t.data_offset + t.n_bytes])) for t in g.tensors.values()]
        return cls(metadata, tensors)

    def set(self, key: str, kind: int, value) -> "RawGGUF":
        self.metadata = [m for m in self.metadata if m[0] != key] + [(key, kind, value)]
        return self

    def tensor(self, name: str, shape=None, data=None) -> "RawGGUF":
        self.tensors = [(n, shape if n == name and shape is not None else s, t,
                         data if n == name and data is not None else d) for n, s, t, d in self.tensors]
        return self

    def header(self) -> bytes:
        out = [b"GGUF", struct.pack("<IQQ", self.version, len(self.tensors), len(self.metadata))]
        for key, kind, value in self.metadata:
            out += [value_bytes(STRING, key), struct.pack("<I", kind), value_bytes(kind, value)]
        offset = 0
        for name, shape, kind, data in self.tensors:
            out += [value_bytes(STRING, name), struct.pack("<I", len(shape)),
                    b"".join(struct.pack("<Q", n) for n in shape), struct.pack("<IQ", kind, offset)]
            offset += -(-len(data) // 32) * 32
        return b"".join(out)

    def to_bytes(self) -> bytes:
        head = self.header()
        out = bytearray(head + b"\0" * (-len(head) % 32))
        for _, _, _, data in self.tensors:
            out += data + b"\0" * (-len(data) % 32)
        return bytes(out)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.to_bytes())
        return path
