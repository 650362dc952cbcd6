"""The Transformer for LLM inference, its layers run in C for prefill and decode alike.

`InferenceTransformer` is the one `Transformer`. On the CPU, for one sequence, with every matrix of every
layer in blocks the kernels multiply (Q4_0, Q4_1, Q8_0), `forward` runs all layers in one C call
(`kernels/layers.c`), whose arithmetic is llama.cpp's operation by operation, so that a GGUF model's logits
are the same bits as there. Other devices, batches and weight types run the PyTorch code; the two are
tested against each other (tests/llm/test_decoder.py) and the C path against llama.cpp itself
(tests/llm/test_models.py).
"""
from __future__ import annotations

import ctypes

import torch

from firstepoch.errors import FirstEpochError
from firstepoch.models.transformer import Transformer

# tokens a C call when prefilling, as llama.cpp's default batch: a one-token call sums attention in another order
PREFILL_CHUNK = 512


class _LayerWeights(ctypes.Structure):  # layers.c's layer_weights
    _fields_ = [(name, ctypes.c_void_p) for name in ("attn_norm", "mlp_norm", "w_qkv", "w_o", "w_gate_up", "w_down",
                                                      "k_cache", "v_cache")] + [("types", ctypes.c_int * 4)]


class _LayerShape(ctypes.Structure):  # layers.c's layer_shape
    _fields_ = [(name, ctypes.c_int64) for name in ("dim", "n_heads", "n_kv", "head_dim", "hidden", "max_len")] + [
        ("eps", ctypes.c_float)]


def _fuse(*linears) -> torch.Tensor | None:
    """Stack the blocks of linears of one type into one tensor and make each linear a view of its rows."""
    if any(lin.blocks is None for lin in linears) or len({lin.qtype for lin in linears}) != 1:
        return None
    fused = torch.cat([lin.blocks for lin in linears])
    row = 0
    for lin in linears:
        lin.blocks = fused[row:row + lin.out_features]
        lin.release_source()  # the file pages the blocks were read from: only the fused copy stays in memory
        row += lin.out_features
    return fused


def _check_layer(c, block, qkv: torch.Tensor, gate_up: torch.Tensor) -> None:
    """Every array layers.c reads for one layer has the size the config says: it trusts them blindly."""
    from firstepoch.llm.quant import BLOCK_TYPES

    def row_bytes(lin, n_in: int) -> int:
        return BLOCK_TYPES[lin.qtype].row_bytes(n_in)

    a, m = block.attn, block.mlp
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    expected = [(qkv, (q + 2 * kv, row_bytes(a.q_proj, c.dim))), (a.o_proj.blocks, (c.dim, row_bytes(a.o_proj, q))),
                (gate_up, (2 * c.hidden_dim, row_bytes(m.gate_proj, c.dim))),
                (m.down_proj.blocks, (c.dim, row_bytes(m.down_proj, c.hidden_dim))),
                (block.attn_norm.weight, (c.dim,)), (block.mlp_norm.weight, (c.dim,))]
    for tensor, shape in expected:
        if tuple(tensor.shape) != shape or not tensor.is_contiguous():
            raise ValueError(f"a layer's weights have shape {tuple(tensor.shape)}, not {shape}")
    if block.attn_norm.weight.dtype != torch.float32 or block.mlp_norm.weight.dtype != torch.float32:
        raise ValueError("the C layers take fp32 norm weights")


class InferenceTransformer(Transformer):
    """A `Transformer` whose layers run in C when its weights allow (see the module's doc)."""

    initialise = False  # every weight is loaded from the file
    _layers_c: list | None = None
    _rope: tuple[torch.Tensor, torch.Tensor] | None = None  # layers.c's cos and sin tables, (context, head_dim / 2)
    _pointers = None  # (the cache they point into, the ctypes array of every layer's pointers, the layer shape)

    def __init__(self, config):
        super().__init__(config)
        for block in self.layers:
            block.attn.like_llamacpp = True  # the PyTorch path rounds to fp16 where layers.c does

    def prepare_c_layers(self) -> bool:
        """Fuse q/k/v and gate/up blocks (no copy kept) and enable the C layers; False if not possible."""
        from firstepoch.llm.kernels import ggml_matmul
        from firstepoch.llm.quant import BLOCK_TYPES

        lib = ggml_matmul()
        if lib is None or self.config.head_dim % 16:  # layers.c's attention works 16 lanes at a time
            return False
        layers = []
        for block in self.layers:
            a, m = block.attn, block.mlp
            if any(lin.blocks is None for lin in (a.o_proj, m.down_proj)):
                return False
            qkv, gate_up = _fuse(a.q_proj, a.k_proj, a.v_proj), _fuse(m.gate_proj, m.up_proj)
            if qkv is None or gate_up is None:
                return False
            _check_layer(self.config, block, qkv, gate_up)
            codes = [BLOCK_TYPES[lin.qtype].code for lin in (a.q_proj, a.o_proj, m.gate_proj, m.down_proj)]
            types = (ctypes.c_int * 4)(*codes)
            layers.append((block, qkv, gate_up, types))
        c = self.config
        cos, sin = torch.empty(c.context, c.head_dim // 2), torch.empty(c.context, c.head_dim // 2)
        lib.rope_tables_like_llamacpp(c.rope_theta, c.head_dim, c.context, cos.data_ptr(), sin.data_ptr())
        self._layers_c, self._rope = layers, (cos, sin)
        return True

    def forward(self, ids: torch.Tensor, start: int = 0, last_only: bool = False) -> torch.Tensor:
        cache = self.layers[0].attn.cache
        if self._layers_c is None or ids.shape[0] != 1 or ids.device.type != "cpu" or (cache is None and start):
            return super().forward(ids, start, last_only)
        from firstepoch.llm.kernels import ggml_matmul

        c, T = self.config, ids.shape[1]
        self.check_fits(start, T)
        temporary = cache is None  # a whole text scored at once: a cache just for this pass
        if temporary:
            self.setup_cache(1, T)
            cache = self.layers[0].attn.cache
        try:
            max_len = cache.k.shape[2]
            if start + T > max_len:
                raise FirstEpochError(f"positions up to {start + T} are past the KV cache ({max_len} positions); "
                                      f"call setup_cache with a larger max_len")
            if start < 0 or ids.min() < 0 or ids.max() >= c.vocab_size:
                raise FirstEpochError(f"token ids must be in [0, {c.vocab_size}) at positions >= 0")
            if self._pointers is None or self._pointers[0] is not cache:
                for layer in self.layers:  # layers.c writes into these at any position below max_len
                    k, v = layer.attn.cache.k, layer.attn.cache.v
                    if k.shape != (1, c.n_kv_heads, max_len, c.head_dim) or k.shape != v.shape or \
                            k.dtype != torch.float32 or v.dtype != torch.float32 or not (k.is_contiguous() and
                                                                                       v.is_contiguous()):
                        raise ValueError(f"the KV cache has shape {tuple(k.shape)} and type {k.dtype}, not "
                                         f"fp32 {(1, c.n_kv_heads, max_len, c.head_dim)}")
                shape = _LayerShape(c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_dim, max_len, c.norm_eps)
                self._pointers = (cache, self._layer_pointers(), shape)
            x = self.embed_tokens(ids)[0].float().contiguous()  # (T, dim), updated in place layer by layer
            for first in range(0, T, PREFILL_CHUNK):
                self._run_layers(x[first:first + PREFILL_CHUNK], start + first)
            if last_only:
                x = x[-1:]
            normed = torch.empty_like(x)
            ggml_matmul().rms_norm_rows(x.data_ptr(), self.norm.weight.data_ptr(), c.norm_eps, c.dim, x.shape[0],
                                        normed.data_ptr())
            return self.lm_head(normed).unsqueeze(0)  # (1, T or 1, vocab)
        finally:
            if temporary:
                self.clear_cache()

    def _run_layers(self, x: torch.Tensor, start: int) -> None:
        """All layers for the rows of x (contiguous, (T, dim)) at positions [start, start + T), in one C call."""
        from firstepoch.llm.kernels import ggml_matmul

        lib, c, (_, layers, shape) = ggml_matmul(), self.config, self._pointers
        T, threads = x.shape[0], torch.get_num_threads()
        work = torch.empty(lib.layers_work_size(ctypes.byref(shape), T, threads))
        widest = max(c.dim, c.hidden_dim, c.n_heads * c.head_dim)
        scratch = torch.empty(T * widest // 32 * 36, dtype=torch.uint8)  # 8-bit activation blocks
        cos, sin = self._rope
        lib.forward_layers(x.data_ptr(), layers, c.n_layers, ctypes.byref(shape), start, T, cos.data_ptr(),
                           sin.data_ptr(), work.data_ptr(), scratch.data_ptr(), threads)

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
