"""The GGUF architectures firstepoch runs: each is the one `Transformer` with some of its config's variations on
(`TransformerConfig.VARIATIONS`), never a copy of the model. `config_from_gguf` reads a file's
`general.architecture` here to know which metadata keys and tensors to expect and what they mean, as llama.cpp's
graph for that architecture uses them.

Mistral's and Ministral's GGUF files declare `llama` (their converter writes them as Llama models), so they
run as `llama`. Not yet: mixtures of experts.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """How one GGUF architecture differs from Llama."""

    # llama.cpp's converter permutes q/k rows for its adjacent-pairs RoPE (llama): the loader undoes it. The other
    # architectures rotate halves (llama.cpp's NEOX RoPE), as the Transformer does, and are stored as trained.
    interleaved_rope: bool = False
    qkv_bias: bool = False  # attn_q.bias, attn_k.bias, attn_v.bias
    qk_norm: bool = False  # attn_q_norm, attn_k_norm: an RMSNorm per head before RoPE
    post_norms: bool = False  # post_attention_norm, post_ffw_norm
    activation: str = "silu"  # the MLP's gate (TransformerConfig.ACTIVATIONS)
    embed_scale: bool = False  # embeddings times sqrt(embedding_length)
    # queries times 1/sqrt(attention.key_length) before attention, whose scores are then not scaled; Gemma's
    # largest models (46 and 62 layers) scale by 1/sqrt(embedding_length / head_count) instead, as llama.cpp does
    query_scale: bool = False
    # the caps it reads, of "attn_softcap" (attn_logit_softcapping) and "final_softcap" (final_logit_softcapping;
    # 0: no cap), else these defaults (None: no cap)
    softcaps: tuple[str, ...] = ()
    attn_softcap: float | None = None
    final_softcap: float | None = None
    # layer i sees the last attention.sliding_window positions (else `sliding_window`; None: no window) unless
    # i % pattern == pattern - 1 (attention.sliding_window_pattern, else `sliding_window_pattern`)
    sliding_window_pattern: int | None = None
    sliding_window: int | None = None
    local_rope_base: float | None = None  # the local layers' RoPE base unless the file gives rope.freq_base_swa
    # matrices stored as one tensor, ours as its consecutive rows: (their tensor in a layer, our modules in order)
    fused: tuple[tuple[str, tuple[str, ...]], ...] = ()


GEMMA = {"post_norms": True, "activation": "gelu_tanh", "embed_scale": True, "query_scale": True}

ARCHITECTURES = {
    "llama": Architecture(interleaved_rope=True),
    "qwen2": Architecture(qkv_bias=True),
    "qwen3": Architecture(qk_norm=True),
    "gemma2": Architecture(**GEMMA, softcaps=("attn_softcap", "final_softcap"), attn_softcap=50.0, final_softcap=30.0,
                           sliding_window_pattern=2, sliding_window=4096),
    "gemma3": Architecture(**GEMMA, softcaps=("final_softcap",), qk_norm=True, sliding_window_pattern=6,
                           local_rope_base=10000.0),
    # Phi-3 and 3.5: q/k/v in one tensor (or three), gate and up in ffn_up; queries scaled by 1/sqrt(head size)
    # before attention, as llama.cpp's graph does; its 128k files' LongRoPE factors are read by config_from_gguf
    "phi3": Architecture(query_scale=True, fused=(("attn_qkv", ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
                                                  ("ffn_up", ("mlp.gate_proj", "mlp.up_proj")))),
}

# Gemma models whose queries are scaled by their model width per head rather than their key length (27B)
GEMMA_WIDE_QUERY_LAYERS = (46, 62)
