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

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = 64 * math.ceil(8 * self.dim / 3 / 64)
        problems = []
        if min(self.vocab_size, self.dim, self.n_layers, self.n_heads, self.n_kv_heads, self.context) < 1:
            problems.append("sizes must be positive")
        elif self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        elif self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        elif (self.dim // self.n_heads) % 2:
            problems.append(f"head size {self.dim // self.n_heads} must be even for rotary embeddings")
        factors = self.rope_freq_factors
        if factors is not None and not problems and (
                len(factors) != self.dim // self.n_heads // 2 or not all(0 < f < float("inf") for f in factors)):
            problems.append(f"rope_freq_factors must be {self.dim // self.n_heads // 2} positive numbers")
        if self.attention not in ATTENTION_KINDS:
            problems.append(f"attention {self.attention!r} is not one of {', '.join(ATTENTION_KINDS)}")
        if problems:
            raise FirstEpochError(f"bad Transformer config: {'; '.join(problems)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def n_parameters(self) -> int:
        """Weights in the model: embeddings (and output head when untied), attention, SwiGLU and norms."""
        kv = self.n_kv_heads * self.head_dim
        layer = self.dim * (2 * self.dim + 2 * kv) + 3 * self.dim * self.hidden_dim + 2 * self.dim
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

# name -> (n_layers, n_heads, dim): tiny is nanoGPT's CPU Shakespeare recipe, small its GPU one, base GPT-2's
PRESETS = {"tiny": (4, 4, 128), "small": (6, 6, 384), "base": (12, 12, 768)}


def from_preset(preset: str, vocab_size: int, context: int, **overrides) -> TransformerConfig:
    if preset not in PRESETS:
        raise FirstEpochError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    n_layers, n_heads, dim = PRESETS[preset]
    fields = {"n_layers": n_layers, "n_heads": n_heads, "dim": dim, **{k: v for k, v in overrides.items() if v}}
    return TransformerConfig(vocab_size=vocab_size, context=context, **fields)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 for stability under bf16, as the reference implementations do
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, length: int, theta: float, device=None,
                freq_factors: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (length, head_dim), for the rotate-half layout; `freq_factors` (head_dim / 2) divide the
    frequencies (Llama 3.1's long-context scaling)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / torch.tensor(freq_factors, device=device, dtype=torch.float32)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
    return angles.cos(), angles.sin()


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


def attention_like_llamacpp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as llama.cpp's CPU backend computes it: keys and values from an fp16 KV cache, queries
    and attention weights rounded to fp16, sums in fp32. q (B, nh, T, hs), k/v (B, nkv, S, hs) with the T
    queries at the last T of the S positions -> (B, nh, T, hs)."""
    def fp16(t: torch.Tensor) -> torch.Tensor:
        return t.half().float()

    group = q.shape[1] // k.shape[1]
    k, v = fp16(k).repeat_interleave(group, 1), fp16(v).repeat_interleave(group, 1)
    scores = fp16(q) @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    T, S = scores.shape[-2:]
    visible = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return fp16(scores.masked_fill(~visible, float("-inf")).softmax(-1)) @ v


# (in_features, out_features, name) -> a layer computing x W^T; names are the state dict's ("layers.0.attn.q_proj")
LinearFactory = Callable[[int, int, str], nn.Module]
# (vocab_size, dim) -> a layer looking up token ids (B, T) as vectors (B, T, dim)
EmbeddingFactory = Callable[[int, int], nn.Module]


def new_linear(in_features: int, out_features: int, name: str) -> nn.Module:
    """The layers a `Transformer` builds for itself: `nn.Linear` without bias (`name` is not needed)."""
    return nn.Linear(in_features, out_features, bias=False)


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig, linear: LinearFactory = new_linear, name: str = "attn"):
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.q_proj = linear(c.dim, c.n_heads * c.head_dim, f"{name}.q_proj")
        self.k_proj = linear(c.dim, c.n_kv_heads * c.head_dim, f"{name}.k_proj")
        self.v_proj = linear(c.dim, c.n_kv_heads * c.head_dim, f"{name}.v_proj")
        self.o_proj = linear(c.n_heads * c.head_dim, c.dim, f"{name}.o_proj")
        self.like_llamacpp = c.attention == "llamacpp_fp16"  # see attention_like_llamacpp
        self.dropout = c.dropout
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.like_llamacpp:  # its KV cache holds fp16 values
            k, v = k.half().float(), v.half().float()
        if self.cache is not None:
            k, v = self.cache.update(start, k, v)  # (B, nkv, start + T, hs)
        if start == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new query sees every cached position
        else:  # a chunk after a cached prefix: query i sees positions up to start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            causal = False
        if self.like_llamacpp:
            y = attention_like_llamacpp(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: TransformerConfig, linear: LinearFactory = new_linear, name: str = "mlp"):
        super().__init__()
        self.gate_proj = linear(config.dim, config.hidden_dim, f"{name}.gate_proj")
        self.up_proj = linear(config.dim, config.hidden_dim, f"{name}.up_proj")
        self.down_proj = linear(config.hidden_dim, config.dim, f"{name}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, linear: LinearFactory = new_linear, name: str = "block"):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config, linear, f"{name}.attn")
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config, linear, f"{name}.mlp")
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, start))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size).

    For generation, `setup_cache(batch)` allocates a KV cache; then `forward(ids, start=pos)` feeds the
    tokens at positions [pos, pos + T) and attends to everything cached before them.

    Args:
        config: the sizes and the attention arithmetic.
        linear: builds each linear layer, `linear(in_features, out_features, name)` (default: `new_linear`).
        embedding: builds the token embedding, `embedding(vocab_size, dim)` (default: `nn.Embedding`).
            A model built by the factories holds their layers as they are: no random initial weights, and an
            output layer tied to the embeddings is theirs to share. Its own layers are initialised as GPT-2's.
    """

    def __init__(self, config: TransformerConfig, linear: LinearFactory | None = None,
                 embedding: EmbeddingFactory | None = None):
        super().__init__()
        own = linear is None and embedding is None  # random initial weights, else loaded ones
        linear, embedding = linear or new_linear, embedding or nn.Embedding
        self.config = config
        self.spec = {"arch": "transformer", **config.to_dict()}
        self.embed_tokens = embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, linear, f"layers.{i}") for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = linear(config.dim, config.vocab_size, "lm_head")
        if own and config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(config.head_dim, config.context, config.rope_theta,
                               freq_factors=config.rope_freq_factors)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if own:
            self.apply(self._init_weights)
            for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

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
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.embed_tokens(ids)  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, cos, sin, start)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))  # (B, T, vocab)
