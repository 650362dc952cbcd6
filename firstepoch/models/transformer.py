"""The one Transformer: a decoder-only Llama-family model (RMSNorm, RoPE, SwiGLU, grouped-query attention,
KV cache). It trains your own GPT and runs GGUF/safetensors LLMs.

Reads top-down: config, norm, rotary embedding, KV cache, attention, MLP, block, model. Parameter names
follow Hugging Face's Llama (`q_proj`, `gate_proj`, ...), so loading other weights is a rename table.
Inference builds the same model from loaded layers (`linear=` and `embedding=` factories, e.g. quantized
ones) and picks its attention arithmetic in the config (`attention="llamacpp_fp16"` for GGUF files).
RoPE uses the "rotate half" layout of Hugging Face checkpoints; GGUF files store q/k permuted for the
interleaved layout, and their loader undoes that permutation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from firstepoch.errors import FirstEpochError
from firstepoch.models.like_llamacpp import (gelu_like_llamacpp, rms_norm_like_llamacpp, rope_like_llamacpp,
                                             rope_tables_like_llamacpp, softcap_like_llamacpp, softmax_like_llamacpp)


@dataclass
class TransformerConfig:
    """Hyper-parameters of a `Transformer`; JSON-serialisable (`to_dict` / `from_dict`).

    `n_kv_heads` < `n_heads` gives grouped-query attention; `hidden_dim` defaults to SwiGLU's 8/3 of `dim`
    rounded up to a multiple of 64. `attention` is the arithmetic of attention (see `ATTENTION_KINDS`):
    PyTorch's own, or llama.cpp's fp16 rounding, which GGUF models use so that their logits equal llama.cpp's.
    """

    vocab_size: int
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    hidden_dim: int | None = None
    context: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    dropout: float = 0.0
    attention: str = "torch"
    # Llama 3.1 and later: each rotary frequency divided by its factor (GGUF's rope_freqs tensor), head_dim / 2 of them
    rope_freq_factors: list[float] | None = None
    # linear RoPE scaling: positions divided by this in the layers that attend to the whole context (Gemma 3 4B+)
    rope_scaling_factor: float = 1.0
    # cos and sin multiplied by this (LongRoPE's attention factor, Phi-3's 128k models)
    rope_attn_factor: float = 1.0
    # how other model families differ from Llama (see llm/architectures.py); the defaults are Llama's
    head_size: int | None = None  # a head size other than dim / n_heads (Gemma 3)
    qkv_bias: bool = False  # biases on queries, keys and values (Qwen 2)
    qk_norm: bool = False  # an RMSNorm over each query and key head before RoPE (Qwen 3, Gemma 3)
    post_norms: bool = False  # an RMSNorm of the attention and MLP outputs before each residual sum (Gemma 2, 3)
    activation: str = "silu"  # the MLP's gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma)
    embed_scale: float = 1.0  # embeddings are multiplied by this (Gemma: sqrt(dim))
    query_scale: float | None = None  # queries are multiplied by this instead of scores by 1/sqrt(head_dim)
    attn_softcap: float | None = None  # attention scores s -> c tanh(s / c) (Gemma 2)
    final_softcap: float | None = None  # logits l -> c tanh(l / c) (Gemma 2)
    sliding_window: int | None = None  # local layers see this many positions, their own included
    sliding_window_pattern: int = 0  # with a window, layer i is local unless i % pattern == pattern - 1 (0: all)
    rope_theta_local: float | None = None  # the local layers' RoPE base (Gemma 3); None: rope_theta

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = 64 * math.ceil(8 * self.dim / 3 / 64)
        problems = []
        if min(self.vocab_size, self.dim, self.n_layers, self.n_heads, self.n_kv_heads, self.context,
               self.head_size or 1, self.sliding_window or 1) < 1 or self.sliding_window_pattern < 0:
            problems.append("sizes must be positive")
        elif self.head_size is None and self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        elif self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        elif self.head_dim % 2:
            problems.append(f"head size {self.head_dim} must be even for rotary embeddings")
        factors = self.rope_freq_factors
        if factors is not None and not problems and (
                len(factors) != self.head_dim // 2 or not all(0 < f < float("inf") for f in factors)):
            problems.append(f"rope_freq_factors must be {self.head_dim // 2} positive numbers")
        if self.attention not in ATTENTION_KINDS:
            problems.append(f"attention {self.attention!r} is not one of {', '.join(ATTENTION_KINDS)}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if problems:
            raise FirstEpochError(f"bad Transformer config: {'; '.join(problems)}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    def is_local(self, layer: int) -> bool:
        """Whether layer `layer` attends to the last `sliding_window` positions only."""
        pattern = self.sliding_window_pattern
        return self.sliding_window is not None and (pattern == 0 or layer % pattern < pattern - 1)

    @property
    def is_llama(self) -> bool:
        """True when none of the other families' variations (`VARIATIONS`) is on: the model is a Llama."""
        defaults = TransformerConfig.__dataclass_fields__
        return all(getattr(self, name) == defaults[name].default for name in VARIATIONS)

    def n_parameters(self) -> int:
        """Weights in the model: embeddings (and output head when untied), attention, the MLP and norms."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        layer = self.dim * (2 * q + 2 * kv) + 3 * self.dim * self.hidden_dim + 2 * self.dim
        layer += (q + 2 * kv) * self.qkv_bias + 2 * self.head_dim * self.qk_norm + 2 * self.dim * self.post_norms
        return self.vocab_size * self.dim * (1 if self.tie_embeddings else 2) + self.n_layers * layer + self.dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        return cls(**d)


# TransformerConfig.attention -> what it computes
ATTENTION_KINDS = {
    "torch": "PyTorch's scaled_dot_product_attention in the model's dtype",
    "llamacpp_fp16": "llama.cpp's CPU arithmetic: an fp16 KV cache, queries and weights rounded to fp16",
}

# the fields in which other families differ from Llama, each off at its default
VARIATIONS = ("rope_scaling_factor", "rope_attn_factor", "head_size", "qkv_bias", "qk_norm", "post_norms",
              "activation", "embed_scale", "query_scale", "attn_softcap", "final_softcap", "sliding_window",
              "rope_theta_local")

# TransformerConfig.activation -> the MLP's gate
ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}

# name -> (n_layers, n_heads, dim): tiny is nanoGPT's CPU Shakespeare recipe, small its GPU one, base GPT-2's
PRESETS = {"tiny": (4, 4, 128), "small": (6, 6, 384), "base": (12, 12, 768)}


def from_preset(preset: str, vocab_size: int, context: int, **overrides) -> TransformerConfig:
    if preset not in PRESETS:
        raise FirstEpochError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    n_layers, n_heads, dim = PRESETS[preset]
    fields = {"n_layers": n_layers, "n_heads": n_heads, "dim": dim, **{k: v for k, v in overrides.items() if v}}
    return TransformerConfig(vocab_size=vocab_size, context=context, **fields)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, in fp32; `like_llamacpp`: in llama.cpp's arithmetic (`like_llamacpp.rms_norm`)."""

    def __init__(self, dim: int, eps: float, like_llamacpp: bool = False):
        super().__init__()
        self.eps, self.like_llamacpp = eps, like_llamacpp
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.like_llamacpp:
            return rms_norm_like_llamacpp(x.float(), self.eps) * self.weight
        # normalise in fp32 for stability under bf16, as the reference implementations do
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def norm(config: TransformerConfig, dim: int | None = None) -> RMSNorm:
    """An RMSNorm over `dim` (default: the model width) with the config's epsilon and arithmetic."""
    return RMSNorm(dim or config.dim, config.norm_eps, like_llamacpp=config.attention == "llamacpp_fp16")


def rope_tables(head_dim: int, length: int, theta: float, device=None, freq_factors: list[float] | None = None,
                scaling_factor: float = 1.0, attn_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (length, head_dim), for the rotate-half layout; `freq_factors` (head_dim / 2) divide the
    frequencies (Llama 3.1's long-context scaling, LongRoPE), `scaling_factor` the positions (linear scaling);
    both tables times `attn_factor`."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / torch.tensor(freq_factors, device=device, dtype=torch.float32)
    positions = torch.arange(length, device=device, dtype=torch.float32) / scaling_factor
    angles = torch.outer(positions, inv_freq)  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    return angles.cos() * attn_factor, angles.sin() * attn_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) queries or keys by their positions' angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class KVCache(nn.Module):
    """Keys and values of the positions seen so far, preallocated for `max_len` positions.

    Shapes: (B, n_kv_heads, max_len, head_dim). `update` writes T new positions at `start` and returns
    the keys and values of positions [0, start + T).
    """

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float | None = None,
                       window: int | None = None, like_llamacpp: bool = False) -> torch.Tensor:
    """Causal attention written out: q (B, nh, T, hs), k/v (B, nkv, S, hs) with the T queries at the last T of the
    S positions -> (B, nh, T, hs). Scores are capped at `softcap` (c tanh(s / c)) and, with a `window`, each
    query sees only the last `window` positions. `like_llamacpp`: as llama.cpp's CPU backend computes it, with
    keys and values from an fp16 KV cache, queries and attention weights rounded to fp16, the cap before the
    scale, and its softmax (`like_llamacpp.softmax_like_llamacpp`)."""
    def fp16(t: torch.Tensor) -> torch.Tensor:
        return t.half().float() if like_llamacpp else t

    group = q.shape[1] // k.shape[1]
    k, v = fp16(k).repeat_interleave(group, 1), fp16(v).repeat_interleave(group, 1)
    scores = fp16(q) @ k.transpose(-1, -2)  # (B, nh, T, S)
    if softcap:
        scores = softcap_like_llamacpp(scores, softcap) if like_llamacpp else softcap * torch.tanh(scores / softcap)
    scores = scores * scale
    T, S = scores.shape[-2:]
    query = torch.arange(S - T, S, device=q.device)[:, None]
    key = torch.arange(S, device=q.device)[None]
    visible = (key <= query) & (query - key < window) if window else key <= query
    scores = scores.masked_fill(~visible, float("-inf"))
    return fp16(softmax_like_llamacpp(scores)) @ v if like_llamacpp else scores.softmax(-1) @ v


# (in_features, out_features, name) -> a layer computing x W^T; names are the state dict's ("layers.0.attn.q_proj")
LinearFactory = Callable[[int, int, str], nn.Module]
# explicit_attention's signature: (q, k, v, scale, softcap, window, like_llamacpp) -> (B, nh, T, hs)
AttentionFunction = Callable[..., torch.Tensor]
# (vocab_size, dim) -> a layer looking up token ids (B, T) as vectors (B, T, dim)
EmbeddingFactory = Callable[[int, int], nn.Module]


def new_linear(in_features: int, out_features: int, name: str) -> nn.Module:
    """The layers a `Transformer` builds for itself: `nn.Linear` without bias (`name` is not needed)."""
    return nn.Linear(in_features, out_features, bias=False)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig, linear: LinearFactory = new_linear, name: str = "attn",
                 local: bool = False, attend: AttentionFunction = explicit_attention):
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        self.q_proj = linear(c.dim, q, f"{name}.q_proj")
        self.k_proj = linear(c.dim, kv, f"{name}.k_proj")
        self.v_proj = linear(c.dim, kv, f"{name}.v_proj")
        self.o_proj = linear(q, c.dim, f"{name}.o_proj")
        if c.qkv_bias:
            self.q_bias, self.k_bias, self.v_bias = (nn.Parameter(torch.zeros(n)) for n in (q, kv, kv))
        if c.qk_norm:
            self.q_norm, self.k_norm = norm(c, c.head_dim), norm(c, c.head_dim)
        self.qkv_bias, self.qk_norm = c.qkv_bias, c.qk_norm
        # queries scaled before attention as llama.cpp does for Gemma, else scores by 1/sqrt(head_dim)
        self.query_scale, self.scale = c.query_scale, 1.0 if c.query_scale else 1 / math.sqrt(c.head_dim)
        self.softcap, self.window = c.attn_softcap, c.sliding_window if local else None
        self.like_llamacpp = c.attention == "llamacpp_fp16"  # see explicit_attention
        self.attend = attend  # written-out attention: for llama.cpp's arithmetic, softcaps and windows
        self.dropout = c.dropout
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qkv_bias:
            q, k, v = q + self.q_bias, k + self.k_bias, v + self.v_bias
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        rotate = rope_like_llamacpp if self.like_llamacpp else apply_rope
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.query_scale:
            q = q * self.query_scale
        if self.like_llamacpp:  # its KV cache holds fp16 values
            k, v = k.half().float(), v.half().float()
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)  # (B, nkv, start + T, hs)
        if self.like_llamacpp or self.softcap or self.window:
            y = self.attend(q, k, v, self.scale, self.softcap, self.window, self.like_llamacpp)
        else:
            if start == 0:
                mask, causal = None, True
            elif T == 1:
                mask, causal = None, False  # one new query sees every cached position
            else:  # a chunk after a cached prefix: query i sees positions up to start + i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                causal = False
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True,
                                               scale=self.scale, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """A gated MLP: down(act(gate(x)) * up(x)), SwiGLU with silu, GeGLU with gelu."""

    def __init__(self, config: TransformerConfig, linear: LinearFactory = new_linear, name: str = "mlp"):
        super().__init__()
        self.gate_proj = linear(config.dim, config.hidden_dim, f"{name}.gate_proj")
        self.up_proj = linear(config.dim, config.hidden_dim, f"{name}.up_proj")
        self.down_proj = linear(config.hidden_dim, config.dim, f"{name}.down_proj")
        like_llamacpp = config.attention == "llamacpp_fp16" and config.activation == "gelu_tanh"
        self.act = gelu_like_llamacpp if like_llamacpp else ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, linear: LinearFactory = new_linear, name: str = "block",
                 local: bool = False, attend: AttentionFunction = explicit_attention):
        super().__init__()
        self.local = local  # attends to a sliding window, with the local RoPE tables
        self.attn_norm = norm(config)
        self.attn = Attention(config, linear, f"{name}.attn", local, attend)
        self.mlp_norm = norm(config)
        self.mlp = MLP(config, linear, f"{name}.mlp")
        if config.post_norms:
            self.attn_post_norm = norm(config)
            self.mlp_post_norm = norm(config)
        self.post_norms = config.post_norms
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> torch.Tensor:
        h = self.attn(self.attn_norm(x), cos, sin, start)
        x = x + self.dropout(self.attn_post_norm(h) if self.post_norms else h)
        h = self.mlp(self.mlp_norm(x))
        return x + self.dropout(self.mlp_post_norm(h) if self.post_norms else h)


class Transformer(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size).

    For generation, `setup_cache(batch)` allocates a KV cache; then `forward(ids, start=pos)` feeds the
    tokens at positions [pos, pos + T) and attends to everything cached before them.

    Args:
        config: the sizes and the attention arithmetic.
        linear: builds each linear layer, `linear(in_features, out_features, name)` (default: `new_linear`).
        embedding: builds the token embedding, `embedding(vocab_size, dim)` (default: `nn.Embedding`).
        attend: the written-out attention (default: `explicit_attention`), e.g. llama.cpp's in C.
            A model built by the factories holds their layers as they are: no random initial weights, and an
            output layer tied to the embeddings is theirs to share. Its own layers are initialised as GPT-2's.
    """

    def __init__(self, config: TransformerConfig, linear: LinearFactory | None = None,
                 embedding: EmbeddingFactory | None = None, attend: AttentionFunction = explicit_attention):
        super().__init__()
        own = linear is None and embedding is None  # random initial weights, else loaded ones
        linear, embedding = linear or new_linear, embedding or nn.Embedding
        self.config = config
        self.spec = {"arch": "transformer", **config.to_dict()}
        self.embed_tokens = embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, linear, f"layers.{i}", config.is_local(i), attend)
                                    for i in range(config.n_layers))
        self.norm = norm(config)
        self.lm_head = linear(config.dim, config.vocab_size, "lm_head")
        if own and config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        for name, table in zip(("rope_cos", "rope_sin", "rope_cos_local", "rope_sin_local"), self.make_rope_tables()):
            self.register_buffer(name, table, persistent=False)
        if own:
            self.apply(self._init_weights)
            for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    def make_rope_tables(self) -> tuple[torch.Tensor, ...]:
        """cos and sin of the global layers, then of the local ones (the same tensors without a local base), each
        (context, head_dim) in the rotate-half layout."""
        c = self.config
        tables = rope_tables_like_llamacpp if c.attention == "llamacpp_fp16" else rope_tables
        cos, sin = tables(c.head_dim, c.context, c.rope_theta, freq_factors=c.rope_freq_factors,
                          scaling_factor=c.rope_scaling_factor, attn_factor=c.rope_attn_factor)
        if c.rope_theta_local is None:
            return cos, sin, cos, sin
        return (cos, sin, *tables(c.head_dim, c.context, c.rope_theta_local))  # local layers' own base, unscaled

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def setup_cache(self, batch: int = 1, max_len: int | None = None, dtype=None) -> None:
        """Allocate a KV cache in every layer for `batch` sequences of up to `max_len` positions."""
        c = self.config
        max_len = max_len or c.context
        dtype = dtype or self.norm.weight.dtype
        device = self.norm.weight.device
        for layer in self.layers:
            layer.attn.cache = KVCache(batch, c.n_kv_heads, max_len, c.head_dim, dtype, device)

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attn.cache = None

    def check_fits(self, start: int, T: int) -> None:
        if start + T > self.config.context:
            raise FirstEpochError(f"{start + T} positions do not fit the model's context of "
                                  f"{self.config.context} tokens; shorten the prompt or the generation")

    def forward(self, ids: torch.Tensor, start: int = 0, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab), or (B, 1, vocab) for the last position only with `last_only` (generation
        needs no more, and the output layer is the largest matrix)."""
        B, T = ids.shape
        self.check_fits(start, T)
        tables = {False: (self.rope_cos[start:start + T], self.rope_sin[start:start + T]),
                  True: (self.rope_cos_local[start:start + T], self.rope_sin_local[start:start + T])}
        x = self.embed(ids)  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, *tables[layer.local], start)
        if last_only:
            x = x[:, -1:]
        return self.capped(self.lm_head(self.norm(x)))  # (B, T, vocab)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        return x * self.config.embed_scale if self.config.embed_scale != 1.0 else x

    def capped(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.config.final_softcap
        if not cap:
            return logits
        return softcap_like_llamacpp(logits, cap) if self.config.attention == "llamacpp_fp16" else \
            cap * torch.tanh(logits / cap)
