"""The Transformer for LLM inference, with its decode step (one new token) in one C call a layer.

`InferenceTransformer` is the one `Transformer`; only `forward` for a single token with a KV cache on the
CPU takes the fast path (`kernels/decode.c`), and only when every matrix of every layer is in blocks the
kernel multiplies (Q4_0, Q4_1, Q8_0). Prefill, training-style full passes, other devices and other weight
types run the PyTorch code. The fast path is tested against it (tests/llm/test_decoder.py).
"""
from __future__ import annotations

import ctypes

import torch

from firstepoch.errors import FirstEpochError
from firstepoch.models.transformer import Transformer

TYPE_CODES = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}  # as decode.c's MATMULS table


class _LayerWeights(ctypes.Structure):  # decode.c's layer_weights
    _fields_ = [(name, ctypes.c_void_p) for name in ("attn_norm", "mlp_norm", "w_qkv", "w_o", "w_gate_up", "w_down",
                                                      "k_cache", "v_cache")] + [("types", ctypes.c_int * 4)]


def _fuse(*linears) -> torch.Tensor | None:
    """Stack the blocks of linears of one type into one tensor and make each linear a view of its rows."""
    if any(lin.blocks is None for lin in linears) or len({lin.qtype for lin in linears}) != 1:
        return None
    fused = torch.cat([lin.blocks for lin in linears])
    row = 0
    for lin in linears:
        lin.blocks = fused[row:row + lin.out_features]
        row += lin.out_features
    return fused


class InferenceTransformer(Transformer):
    """A `Transformer` whose single-token decode steps run in C when its weights allow (see module doc)."""

    _layers_c: list | None = None
    _pointers = None  # (the cache they point into, the ctypes array of every layer's pointers)

    def __init__(self, config):
        super().__init__(config)
        for block in self.layers:
            block.attn.like_llamacpp = True  # fp16 KV cache arithmetic, as in decode.c

    def prepare_fast_decode(self) -> bool:
        """Fuse q/k/v and gate/up blocks (no copy kept) and enable the C decode step; False if not possible."""
        from firstepoch.llm.kernels import ggml_matmul

        if ggml_matmul() is None or self.config.head_dim % 16:  # decode.c's attention works 16 lanes at a time
            return False
        layers = []
        for block in self.layers:
            a, m = block.attn, block.mlp
            if any(lin.blocks is None for lin in (a.o_proj, m.down_proj)):
                return False
            qkv, gate_up = _fuse(a.q_proj, a.k_proj, a.v_proj), _fuse(m.gate_proj, m.up_proj)
            if qkv is None or gate_up is None:
                return False
            codes = [TYPE_CODES[lin.qtype] for lin in (a.q_proj, a.o_proj, m.gate_proj, m.down_proj)]
            types = (ctypes.c_int * 4)(*codes)
            layers.append((block, qkv, gate_up, types))
        self._layers_c = layers
        return True

    def forward(self, ids: torch.Tensor, start: int = 0, last_only: bool = False) -> torch.Tensor:
        cache = self.layers[0].attn.cache
        if self._layers_c is None or ids.shape != (1, 1) or cache is None or ids.device.type != "cpu":
            return super().forward(ids, start, last_only)
        from firstepoch.llm.kernels import ggml_matmul

        c = self.config
        max_len = cache.k.shape[2]
        if start >= max_len:
            raise FirstEpochError(f"position {start} is past the KV cache ({max_len} positions); "
                                  f"call setup_cache with a larger max_len")
        if self._pointers is None or self._pointers[0] is not cache:
            self._pointers = (cache, self._layer_pointers())
        x = self.embed_tokens(ids).reshape(c.dim).contiguous()  # (dim,) fp32, updated in place layer by layer
        cos, sin = self.rope_cos[start], self.rope_sin[start]
        qkv_rows = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
        work = torch.empty(c.dim * 2 + qkv_rows + 2 * c.hidden_dim + c.n_heads * max_len)
        scratch = torch.empty(max(c.dim, c.hidden_dim) // 32 * 36, dtype=torch.uint8)
        ggml_matmul().decode_layers(x.data_ptr(), self._pointers[1], c.n_layers, c.norm_eps, c.dim, c.n_heads,
                                    c.n_kv_heads, c.head_dim, c.hidden_dim, max_len, start, cos.data_ptr(),
                                    sin.data_ptr(), work.data_ptr(), scratch.data_ptr(), torch.get_num_threads())
        return self.lm_head(self.norm(x.view(1, 1, c.dim)))  # (1, 1, vocab)

    def clear_cache(self) -> None:
        super().clear_cache()
        self._pointers = None

    def _layer_pointers(self):
        layers = (_LayerWeights * len(self._layers_c))()
        for entry, (block, qkv, gate_up, types) in zip(layers, self._layers_c):
            entry.attn_norm, entry.mlp_norm = block.attn_norm.weight.data_ptr(), block.mlp_norm.weight.data_ptr()
            entry.w_qkv, entry.w_o = qkv.data_ptr(), block.attn.o_proj.blocks.data_ptr()
            entry.w_gate_up, entry.w_down = gate_up.data_ptr(), block.mlp.down_proj.blocks.data_ptr()
            entry.k_cache, entry.v_cache = block.attn.cache.k.data_ptr(), block.attn.cache.v.data_ptr()
            entry.types[:] = types
        return layers
