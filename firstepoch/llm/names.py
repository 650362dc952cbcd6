"""Weight names: the `Transformer`'s own (Hugging Face's Llama names without the `model.` prefix) and each file
format's, one table per format. Loading reads a file's tensor under `table.theirs(ours)` and export writes ours
under the same name, so the two directions can never disagree.

    GGUF.theirs("layers.3.attn.q_proj") == "blk.3.attn_q.weight"
    HF.theirs("embed_tokens") == "model.embed_tokens.weight"
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NameTable:
    """A format's weight names: `top` for the modules outside the layers, `layer` for those inside layer i,
    which the format puts under `block` with i filled in; every weight ends in `.weight`, a bias in `.bias`."""

    top: dict[str, str]
    layer: dict[str, str]
    block: str  # e.g. "blk.{i}."

    def theirs(self, ours: str) -> str:
        """Our module name ('layers.3.attn.q_proj', 'embed_tokens') -> the format's weight name."""
        if ours in self.top:
            return f"{self.top[ours]}.weight"
        _, index, rest = ours.split(".", 2)
        name = self.layer[rest]
        return f"{self.block.format(i=index)}{name}{'' if name.endswith('.bias') else '.weight'}"


# llama.cpp's names (gguf-py's tensor_mapping)
GGUF = NameTable(
    top={"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"},
    layer={"attn_norm": "attn_norm", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v",
           "attn.o_proj": "attn_output", "mlp_norm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
           "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
           # the other architectures' (ARCHITECTURES)
           "attn.q_bias": "attn_q.bias", "attn.k_bias": "attn_k.bias", "attn.v_bias": "attn_v.bias",
           "attn.q_norm": "attn_q_norm", "attn.k_norm": "attn_k_norm", "attn_post_norm": "post_attention_norm",
           "mlp_post_norm": "post_ffw_norm"},
    block="blk.{i}.")

# Hugging Face's LlamaForCausalLM
HF = NameTable(
    top={"embed_tokens": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"},
    layer={"attn_norm": "input_layernorm", "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
           "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj",
           "mlp_norm": "post_attention_layernorm", "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.up_proj",
           "mlp.down_proj": "mlp.down_proj"},
    block="model.layers.{i}.")


def weight_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every weight of a `Transformer` with `config`, by our module name, in PyTorch's order: a linear layer's
    weight is (out_features, in_features). A GGUF file lists the same dimensions the other way round."""
    c, q, kv = config, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    shapes = {"embed_tokens": (c.vocab_size, c.dim), "norm": (c.dim,)}
    if not c.tie_embeddings:
        shapes["lm_head"] = (c.vocab_size, c.dim)
    layer = {"attn_norm": (c.dim,), "mlp_norm": (c.dim,), "attn.q_proj": (q, c.dim), "attn.k_proj": (kv, c.dim),
             "attn.v_proj": (kv, c.dim), "attn.o_proj": (c.dim, q), "mlp.gate_proj": (c.hidden_dim, c.dim),
             "mlp.up_proj": (c.hidden_dim, c.dim), "mlp.down_proj": (c.dim, c.hidden_dim)}
    if c.qkv_bias:
        layer.update({"attn.q_bias": (q,), "attn.k_bias": (kv,), "attn.v_bias": (kv,)})
    if c.qk_norm:
        layer.update({"attn.q_norm": (c.head_dim,), "attn.k_norm": (c.head_dim,)})
    if c.post_norms:
        layer.update({"attn_post_norm": (c.dim,), "mlp_post_norm": (c.dim,)})
    for i in range(c.n_layers):
        shapes.update({f"layers.{i}.{name}": shape for name, shape in layer.items()})
    return shapes
