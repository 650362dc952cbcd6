"""GGUF export: a firstepoch GPT bundle as a `llama`-architecture GGUF file that llama.cpp and Ollama run.

Weights are written as F32 under llama.cpp's tensor names. Queries and keys are permuted from the
rotate-half RoPE layout our Transformer uses to the interleaved layout llama.cpp applies to `llama`
models. Tokenizers: the character tokenizer becomes a SentencePiece-style vocabulary (one piece per
character, byte-fallback pieces `<0xNN>`, no merges, no space prefix), which llama.cpp then splits
exactly as we do; the byte-level BPE becomes a GPT-2 vocabulary with its merges.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from firstepoch.errors import FirstEpochError

SPM_SPACE = "\u2581"  # SentencePiece's visible space


def _to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * head_dim, dim) rows of rotate-half pairs (i, i + half) -> interleaved pairs (2i, 2i + 1)."""
    out_features = weight.shape[0]
    head_dim = out_features // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(out_features, -1)


def _tensors(model) -> dict[str, np.ndarray]:
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["embed_tokens.weight"], "output_norm.weight": sd["norm.weight"]}
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {"attn_norm.weight": "attn_norm.weight", "attn.v_proj.weight": "attn_v.weight",
             "attn.o_proj.weight": "attn_output.weight", "mlp_norm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(c.n_layers):
        for ours, theirs in names.items():
            out[f"blk.{i}.{theirs}"] = sd[f"layers.{i}.{ours}"]
        out[f"blk.{i}.attn_q.weight"] = _to_interleaved(sd[f"layers.{i}.attn.q_proj.weight"], c.n_heads)
        out[f"blk.{i}.attn_k.weight"] = _to_interleaved(sd[f"layers.{i}.attn.k_proj.weight"], c.n_kv_heads)
    return {name: t.contiguous().numpy() for name, t in out.items()}


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
