"""The inference `Transformer` of an LLM file: its config read from GGUF metadata with every value checked
against `LIMITS`, its tensors checked against the config, the memory it needs checked against what is free,
and the model built from its layers as they are stored (`QuantizedLinear`), without random initial weights.
Hugging Face folders (`hf.py`) share the limits, the memory check and the builder."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from firstepoch.errors import FirstEpochError
from firstepoch.llm.architectures import ARCHITECTURES, GEMMA_WIDE_QUERY_LAYERS
from firstepoch.models.transformer import RMSNorm, TransformerConfig

ROPE_TABLES = 8  # RoPE tables of context x head_dim floats an inference model holds at most (and builds in float64)


# what a llama-architecture file may declare: far above any real model, so that a lie in the metadata is
# refused before it sizes an allocation or a loop (llama.cpp allows at most 512 layers)
LIMITS = {"embedding_length": 1 << 17, "block_count": 512, "attention.head_count": 1 << 10,
          "attention.head_count_kv": 1 << 10, "feed_forward_length": 1 << 20, "context_length": 1 << 24,
          "vocab_size": 1 << 22, "attention.key_length": 1 << 12, "attention.sliding_window": 1 << 24,
          "rope.scaling.original_context_length": 1 << 24}


def _size(g, key: str, default: int | None = None) -> int:
    """The architecture's key `key` as a positive integer within `LIMITS`, or one clear line."""
    name, value = f"{g.architecture}.{key}", g.arch(key, default)
    if value is None:
        raise FirstEpochError(f"{g.path}: the metadata has no {name}; the file is incomplete or not a "
                              f"{g.architecture} model")
    if isinstance(value, bool) or not isinstance(value, int):
        raise FirstEpochError(f"{g.path}: {name} is {_shown(value)}, not an integer "
                              f"(per-layer values are not supported)")
    if not 1 <= value <= LIMITS[key]:
        raise FirstEpochError(f"{g.path}: {name} is {value}; it must be between 1 and {LIMITS[key]:,}")
    return value


def _count(g, key: str, default: int) -> int:
    """A non-negative integer of the architecture's metadata (0 allowed), or one clear line."""
    name, value = f"{g.architecture}.{key}", g.arch(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LIMITS["block_count"]:
        raise FirstEpochError(f"{g.path}: {name} is {_shown(value)}; it must be a whole number up to "
                              f"{LIMITS['block_count']} (per-layer lists are not supported yet)")
    return value


def _positive_float(g, key: str, default: float, low: float = 1e-30, high: float = 1e30) -> float:
    """A positive number within [low, high] (by default all that fp32, which the kernels compute in, holds with
    room to spare), or one clear line."""
    name, value = f"{g.architecture}.{key}", g.arch(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise FirstEpochError(f"{g.path}: {name} is {_shown(value)}; it must be a positive number from {low:g} to "
                              f"{high:g}")
    return float(value)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_from_gguf(g, context: int | None = None) -> TransformerConfig:
    """The `TransformerConfig` a GGUF file declares, every value checked (type, range, consistency), with the
    variations of its architecture (`ARCHITECTURES`)."""
    if not isinstance(g.architecture, str) or g.architecture not in ARCHITECTURES:
        raise FirstEpochError(f"{g.path}: architecture {_shown(g.architecture)} is not supported yet; supported: "
                              f"{', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[g.architecture]
    dim, n_heads = _size(g, "embedding_length"), _size(g, "attention.head_count")
    n_kv_heads = _size(g, "attention.head_count_kv", n_heads)
    head_dim = _size(g, "attention.key_length", dim // n_heads if dim % n_heads == 0 else None)
    if n_heads % n_kv_heads or head_dim % 2:
        raise FirstEpochError(f"{g.path}: {n_heads} heads, {n_kv_heads} key/value heads and a head size of "
                              f"{head_dim} do not fit together (heads must split into kv groups, heads be of "
                              f"even size)")
    if g.arch("rope.dimension_count", head_dim) != head_dim:
        raise FirstEpochError(f"{g.path}: partial rotary embeddings ({g.architecture}.rope.dimension_count "
                              f"{_shown(g.arch('rope.dimension_count'))} of a head of {head_dim}) are not "
                              f"supported yet")
    if g.arch("attention.value_length", head_dim) != head_dim:
        raise FirstEpochError(f"{g.path}: {g.architecture}.attention.value_length is "
                              f"{_shown(g.arch('attention.value_length'))}, not the key length {head_dim}; values "
                              f"of another size than keys are not supported yet")
    trained = _size(g, "context_length", 2048)
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
        raise FirstEpochError(f"context {context!r}: give a positive number of tokens")
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    vocab = _size(g, "vocab_size", len(tokens) if isinstance(tokens, list) and tokens else None)
    n_layers = _size(g, "block_count")
    variations = {}
    if head_dim * n_heads != dim:
        variations["head_size"] = head_dim
    f32 = np.float32  # llama.cpp computes both in float: sqrtf(n_embd), 1.0f / sqrtf(head size)
    if arch.embed_scale:
        variations["embed_scale"] = float(np.sqrt(f32(dim)))
    if arch.query_scale:
        wide = g.architecture.startswith("gemma") and n_layers in GEMMA_WIDE_QUERY_LAYERS
        if wide and dim < n_heads:
            raise FirstEpochError(f"{g.path}: {n_heads} heads for a width of {dim} do not fit together")
        variations["query_scale"] = float(f32(1) / np.sqrt(f32(dim // n_heads if wide else head_dim)))
    for field, key, default in (("attn_softcap", "attn_logit_softcapping", arch.attn_softcap),
                                ("final_softcap", "final_logit_softcapping", arch.final_softcap)):
        if field in arch.softcaps and g.arch(key, default):  # 0 or absent without a default: no cap
            variations[field] = _positive_float(g, key, default, low=1e-3, high=1e6)
    if arch.sliding_window_pattern is not None and g.arch("attention.sliding_window", arch.sliding_window):
        variations["sliding_window"] = _size(g, "attention.sliding_window", arch.sliding_window)
        variations["sliding_window_pattern"] = _count(g, "attention.sliding_window_pattern",
                                                      arch.sliding_window_pattern)
        if arch.local_rope_base is not None or g.arch("rope.freq_base_swa") is not None:
            variations["rope_theta_local"] = _positive_float(g, "rope.freq_base_swa", arch.local_rope_base)
    factors, attn_factor = _rope_factors(g, head_dim, min(context or trained, trained))
    return TransformerConfig(  # llama.cpp's attention arithmetic, so that logits are the same bits as there
        attention="llamacpp_fp16", vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, hidden_dim=_size(g, "feed_forward_length"), context=min(context or trained, trained),
        norm_eps=_positive_float(g, "attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=_positive_float(g, "rope.freq_base", 10000.0), tie_embeddings="output.weight" not in g.tensors,
        rope_freq_factors=factors, rope_attn_factor=attn_factor, rope_scaling_factor=_rope_scaling(g),
        qkv_bias=arch.qkv_bias, qk_norm=arch.qk_norm, post_norms=arch.post_norms, activation=arch.activation,
        **variations)


def _rope_scaling(g) -> float:
    """The linear RoPE scaling factor (positions divided by it), 1.0 without scaling; other kinds refused."""
    kind = g.arch("rope.scaling.type", "none")
    if kind in ("none", None):
        return 1.0
    if kind != "linear":
        raise FirstEpochError(f"{g.path}: RoPE scaling {_shown(kind)} is not supported yet (linear scaling and "
                              f"Llama 3.1's rope_freqs are)")
    return _positive_float(g, "rope.scaling.factor", 1.0, low=1e-6, high=1e6)


def _rope_factors(g, head_dim: int, context: int) -> tuple[list[float] | None, float]:
    """(one divisor per rotary frequency or None, the factor on cos and sin): Llama 3.1's `rope_freqs` tensor, or
    LongRoPE's (Phi-3's 128k files) `rope_factors_long` for a context past rope.scaling.original_context_length
    and `rope_factors_short` within it, with rope.scaling.attn_factor; each checked."""
    name = "rope_freqs.weight"
    if name not in g.tensors and {"rope_factors_long.weight", "rope_factors_short.weight"} <= set(g.tensors):
        original = _size(g, "rope.scaling.original_context_length", _size(g, "context_length", 2048))
        name = "rope_factors_long.weight" if context > original else "rope_factors_short.weight"
    t = g.tensors.get(name)
    if t is None:
        return None, 1.0
    from firstepoch.llm.gguf import tensor_array

    if tuple(int(n) for n in t.shape) != (head_dim // 2,):
        raise FirstEpochError(f"{g.path}: tensor {name} has shape {list(map(int, t.shape))}, not "
                              f"[{head_dim // 2}] (one factor per rotary frequency)")
    factors = tensor_array(t).reshape(-1).astype(float).tolist()
    if not all(0 < f < float("inf") for f in factors):
        raise FirstEpochError(f"{g.path}: {name} holds a factor that is not a positive number")
    return factors, _positive_float(g, "rope.scaling.attn_factor", 1.0, low=1e-3, high=1e3)


def check_tensors(g, config: TransformerConfig) -> None:
    """Refuse a file whose tensors disagree with its metadata, before any kernel sees a pointer into it: every
    expected tensor present with exactly the shape `config` implies, and the vocabulary the size of the
    embedding table."""
    from firstepoch.llm.names import weight_shapes

    shapes = weight_shapes(config)
    for ours, shape in shapes.items():
        name, rows = stored_as(g, shapes, ours)
        if rows is not None:  # one of several matrices in a fused tensor: that tensor holds all their rows
            shape = (rows.total, shape[1])
        shape = shape[::-1]  # GGUF lists the fastest-varying dimension first
        t = g.tensors.get(name)
        if t is None:
            raise FirstEpochError(f"{g.path}: tensor {name} is missing; the file is incomplete or not a "
                                  f"{g.architecture} model")
        if tuple(int(n) for n in t.shape) != shape:
            raise FirstEpochError(f"{g.path}: tensor {name} has shape {list(map(int, t.shape))} but the metadata "
                                  f"implies {list(shape)}; the file is corrupt or its metadata is wrong")
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) != config.vocab_size:
        raise FirstEpochError(f"{g.path}: the tokenizer has {len(tokens):,} tokens but the embedding table "
                              f"{config.vocab_size:,} rows; the file is corrupt or its metadata is wrong")


@dataclass(frozen=True)
class FusedRows:
    """Rows [start, stop) of a fused tensor of `total` rows."""

    start: int
    stop: int
    total: int


def stored_as(g, shapes: dict, ours: str) -> tuple[str, FusedRows | None]:
    """The file's tensor that holds our weight `ours` (a name of `weight_shapes`), and the rows of it that are
    ours where the architecture fuses several matrices into one tensor (None: all of it)."""
    from firstepoch.llm.names import GGUF

    if ours.startswith("layers."):
        _, index, rest = ours.split(".", 2)
        for theirs, parts in ARCHITECTURES[g.architecture].fused:
            name = f"blk.{index}.{theirs}.weight"
            if rest in parts and (name in g.tensors or GGUF.theirs(ours) not in g.tensors):
                sizes = [shapes[f"layers.{index}.{part}"][0] for part in parts]
                start = sum(sizes[:parts.index(rest)])
                return name, FusedRows(start, start + sizes[parts.index(rest)], sum(sizes))
    return GGUF.theirs(ours), None


def memory_needed(g, config: TransformerConfig) -> int:
    """Bytes the loaded model takes: matrices in the kernel's block types as they are, other matrices as bf16,
    vectors as fp32, and the KV cache for the whole context."""
    from firstepoch.llm.blocktypes import BLOCK_TYPES

    def size(t) -> int:
        if len(t.shape) < 2:
            return 4 * int(t.n_elements)
        return int(t.n_bytes) if t.tensor_type.name in BLOCK_TYPES else 2 * int(t.n_elements)

    weights = sum(size(t) for t in g.tensors.values())
    cache = kv_cache_bytes(config)
    rope = ROPE_TABLES * config.context * config.head_dim * 4  # fp32 cos and sin, global and local, C and PyTorch
    return weights + cache + rope


def kv_cache_bytes(config: TransformerConfig, kind: str = "f16") -> int:
    """Keys and values of one sequence over the whole context, every layer, in a KV cache of `kind`
    (decoder.KV_CACHE_TYPES)."""
    from firstepoch.llm.decoder import kv_row_bytes

    return 2 * config.n_layers * config.n_kv_heads * config.context * kv_row_bytes(config.head_dim, kind)


def check_fits(needed: int, source) -> None:
    available = available_memory()
    if available is not None and needed > available:
        raise FirstEpochError(f"{source}: the model needs about {needed / 2**30:.1f} GiB but only "
                              f"{available / 2**30:.1f} GiB of memory is free; pick a smaller model or quantization, "
                              f"or a shorter --context")


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def load_gguf(path: Path, context: int | None = None):
    """A GGUF file -> (Transformer, LLMTokenizer, chat template or None, info)."""
    from firstepoch.llm.gguf import from_interleaved, read_gguf, tensor_array
    from firstepoch.llm.names import GGUF, weight_shapes
    from firstepoch.llm.quant import QuantizedLinear
    from firstepoch.llm.tokenizer import LLMTokenizer

    g = read_gguf(path)
    config = config_from_gguf(g, context)
    check_tensors(g, config)
    check_fits(memory_needed(g, config), path)
    tokenizer = LLMTokenizer.from_gguf(g.metadata, str(path))

    def tensor(ours: str):
        return g.tensors[GGUF.theirs(ours)]  # present, with its shape checked

    interleaved, shapes = ARCHITECTURES[g.architecture].interleaved_rope, weight_shapes(config)

    def matrix(ours: str) -> QuantizedLinear:
        name, fused = stored_as(g, shapes, ours)
        if fused is not None:  # its rows of the fused tensor (shape checked), as a copy
            return QuantizedLinear.from_gguf(g.tensors[name], rows=lambda w: w[fused.start:fused.stop])
        heads = {"attn.q_proj": config.n_heads, "attn.k_proj": config.n_kv_heads}.get(ours.split(".", 2)[-1])
        heads = heads if interleaved else None
        return QuantizedLinear.from_gguf(tensor(ours), rows=(lambda w: from_interleaved(w, heads)) if heads else None)

    def vector(ours: str) -> torch.Tensor:
        return torch.from_numpy(tensor_array(tensor(ours)).copy())

    model = build_inference_model(config, matrix, vector, interleaved=interleaved)
    name, template = g.metadata.get("general.name"), g.metadata.get("tokenizer.chat_template")
    info = {"architecture": g.architecture, "name": name if isinstance(name, str) else path.stem,
            "quantization": g.quantization, "file_bytes": path.stat().st_size}
    return model, tokenizer, template if isinstance(template, str) else None, info


def build_inference_model(config: TransformerConfig, matrix, vector, interleaved: bool = True) -> nn.Module:
    """A `Transformer` for inference, built from loaded layers: `matrix(name)` gives each linear layer as a
    `QuantizedLinear` (compact), `vector(name)` each norm's weight; the embedding table is shared with the
    output layer when tied. No layer gets random initial weights first. `interleaved`: the file stores q/k for
    llama.cpp's adjacent-pairs RoPE (see `CLayers.prepare`)."""
    from firstepoch.llm.decoder import InferenceTransformer

    table = matrix("embed_tokens")

    def linear(in_features: int, out_features: int, name: str) -> nn.Module:
        layer = table if name == "lm_head" and config.tie_embeddings else matrix(name)
        assert (layer.in_features, layer.out_features) == (in_features, out_features), name  # checked on reading
        return layer

    model = InferenceTransformer(config, linear=linear, embedding=lambda vocab_size, dim: _Embedding(table))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, RMSNorm):
                module.weight.copy_(vector(name))
        for name, bias in model.named_parameters():
            if name.endswith("_bias"):  # attention biases (Qwen 2)
                bias.copy_(vector(name))
    model.requires_grad_(False)
    model.prepare_c_layers(interleaved)
    return model.eval()


class _Embedding(nn.Module):
    """Rows of a `QuantizedLinear`'s weight as fp32 embeddings (the table is shared with the output layer)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.rows(ids)
