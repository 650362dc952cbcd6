"""The Transformer for LLM inference, its layers run in C for prefill and decode alike.

`InferenceTransformer` is the one `Transformer`, of any architecture in llm/architectures.py. On the CPU, for one
sequence, with every matrix of every layer in blocks the kernels multiply (`blocktypes.BLOCK_TYPES`) and
llama.cpp's attention arithmetic in its config, `forward` runs all layers in one C call (`kernels/layers.c`,
through its `CLayers`), whose arithmetic is llama.cpp's operation by operation, so that a GGUF model's logits are
the same bits as there. Other devices, batches and weight types run the PyTorch code (in llama.cpp's arithmetic
too: models/like_llamacpp.py, with layers.c's attention and RoPE tables where compiled); the two are tested
against each other (tests/llm/test_decoder.py, test_architectures.py) and against llama.cpp itself
(tests/llm/test_models.py, test_kquants.py, test_gemma3.py).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from firstepoch.errors import FirstEpochError
from firstepoch.models.transformer import Block, KVCache, Transformer, TransformerConfig, explicit_attention

if TYPE_CHECKING:
    from firstepoch.llm.kernels import Kernels, LayerShape

# tokens a C call when prefilling, as llama.cpp's default batch: a one-token call sums attention in another order
PREFILL_CHUNK = 512


# the KV cache's number formats (`--kv-cache`): fp16, as llama.cpp's default, or Q8_0 blocks of 32 (34 bytes)
KV_CACHE_TYPES = ("f16", "q8_0")


def kv_cache_row(head_dim: int, kind: str) -> int:
    """The last dimension of a KV cache of `kind` for heads of `head_dim`: numbers (f16), or bytes (q8_0)."""
    return head_dim // 32 * 34 if kind == "q8_0" else head_dim


def kv_row_bytes(head_dim: int, kind: str) -> int:
    return kv_cache_row(head_dim, kind) if kind == "q8_0" else 2 * head_dim


def _fuse(*linears) -> torch.Tensor | None:
    """Stack the blocks of linears of one type into one tensor and make each linear a view of its rows; None
    (nothing changed) when their types differ, as in llama.cpp's mixtures (Q4_K_M: q and k in Q5_0, v in Q8_0)."""
    if len({lin.qtype for lin in linears}) != 1:
        return None
    fused = torch.cat([lin.blocks for lin in linears])
    row = 0
    for lin in linears:
        lin.blocks = fused[row:row + lin.out_features]
        lin.release_source()  # the file pages the blocks were read from: only the fused copy stays in memory
        row += lin.out_features
    return fused


def _check_layer(c: TransformerConfig, block: Block) -> None:
    """Every array layers.c reads for one layer has the size the config says: it trusts them blindly."""
    from firstepoch.llm.blocktypes import BLOCK_TYPES

    a, m = block.attn, block.mlp
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    hidden = c.hidden_dim
    matrices = [(a.q_proj, q, c.dim), (a.k_proj, kv, c.dim), (a.v_proj, kv, c.dim), (a.o_proj, c.dim, q),
                (m.gate_proj, hidden, c.dim), (m.up_proj, hidden, c.dim), (m.down_proj, c.dim, hidden)]
    expected = [(lin.blocks, (rows, BLOCK_TYPES[lin.qtype].row_bytes(n_in))) for lin, rows, n_in in matrices]
    vectors = [(block.attn_norm.weight, (c.dim,)), (block.mlp_norm.weight, (c.dim,))]
    if c.qkv_bias:
        vectors += [(a.q_bias, (q,)), (a.k_bias, (kv,)), (a.v_bias, (kv,))]
    if c.qk_norm:
        vectors += [(a.q_norm.weight, (c.head_dim,)), (a.k_norm.weight, (c.head_dim,))]
    if c.post_norms:
        vectors += [(block.attn_post_norm.weight, (c.dim,)), (block.mlp_post_norm.weight, (c.dim,))]
    for tensor, shape in expected + vectors:
        if tuple(tensor.shape) != shape or not tensor.is_contiguous():
            raise ValueError(f"a layer's weights have shape {tuple(tensor.shape)}, not {shape}")
    if any(tensor.dtype != torch.float32 for tensor, _ in vectors):
        raise ValueError("the C layers take fp32 norm weights and biases")


@dataclass
class CLayer:
    """One block's arrays as layers.c reads them: its matrices' own blocks, q/k/v and gate/up stacked in one
    array each where they are of one type (one product instead of three)."""

    block: Block
    qkv: torch.Tensor | None  # q, k and v rows stacked (q + 2 kv rows, row bytes), or None
    gate_up: torch.Tensor | None  # gate and up rows stacked (2 hidden rows, row bytes), or None

    @property
    def matrices(self) -> list:
        a, m = self.block.attn, self.block.mlp
        return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]

    def vectors(self, config: TransformerConfig) -> list[torch.Tensor | None]:
        """Its biases of q, k, v and RMSNorm weights of q and k heads and of the attention and MLP outputs, in
        layer_weights' order, None where the architecture has none."""
        a, b = self.block.attn, self.block
        biases = [a.q_bias, a.k_bias, a.v_bias] if config.qkv_bias else [None] * 3
        head_norms = [a.q_norm.weight, a.k_norm.weight] if config.qk_norm else [None] * 2
        post = [b.attn_post_norm.weight, b.mlp_post_norm.weight] if config.post_norms else [None] * 2
        return biases + head_norms + post


@dataclass
class CLayers:
    """What the C path of an `InferenceTransformer` holds: every layer's fused weights, llama.cpp's rope tables,
    and the layer pointers bound to the KV caches in use (`bind`). Built by `CLayers.prepare(model)`."""

    kernels: Kernels
    config: TransformerConfig
    layers: list[CLayer]
    interleaved: bool  # keys cached in GGUF's order (llama), else as they are (layers.c's layer_shape)
    rope: dict  # local (a bool) -> the model's own (cos, sin) buffers, (context, head_dim), from layers.c
    caches: list[KVCache] | None = field(default=None, repr=False)  # what `pointers` point into
    pointers: ctypes.Array | None = field(default=None, repr=False)  # a LayerWeights per layer
    shape: LayerShape | None = field(default=None, repr=False)  # the sizes of the bound caches
    slots: int = 0  # the sequences the bound caches hold

    @classmethod
    def prepare(cls, model: Transformer, interleaved: bool = True) -> "CLayers | None":
        """Fuse q/k/v and gate/up blocks (no copy kept) for the C layers; None where they cannot run the model:
        no kernels, attention other than llama.cpp's, a head size that is not a multiple of 16, or a matrix not
        in one block type the kernels multiply. `interleaved`: the model's GGUF stores q/k for llama.cpp's
        adjacent-pairs RoPE (llama), whose order of summation the cached keys then keep."""
        from firstepoch.llm.kernels import compiled_kernels
        from firstepoch.llm.blocktypes import BLOCK_TYPES

        kernels, c = compiled_kernels(), model.config
        # layers.c's attention is llama.cpp's, and works 16 lanes at a time
        if kernels is None or c.attention != "llamacpp_fp16" or c.head_dim % 16:
            return None
        layers = []
        for block in model.layers:
            a, m = block.attn, block.mlp
            linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            if any(getattr(lin, "blocks", None) is None or lin.qtype not in BLOCK_TYPES for lin in linears):
                return None
            layers.append(CLayer(block, _fuse(a.q_proj, a.k_proj, a.v_proj), _fuse(m.gate_proj, m.up_proj)))
            _check_layer(c, block)
        rope = {False: (model.rope_cos, model.rope_sin), True: (model.rope_cos_local, model.rope_sin_local)}
        for table in (t for pair in rope.values() for t in pair):  # layers.c reads a row for any position < context
            if tuple(table.shape) != (c.context, c.head_dim) or table.dtype != torch.float32 or \
                    not table.is_contiguous():
                raise ValueError(f"a RoPE table has shape {tuple(table.shape)}, not {(c.context, c.head_dim)}")
        return cls(kernels, c, layers, interleaved, rope)

    def bind(self, caches: list[KVCache]) -> None:
        """Point the layers at these KV caches (one a layer), after checking their shapes: layers.c writes into
        them at any position below their length. Nothing to do when they are bound already."""
        from firstepoch.llm.blocktypes import BLOCK_TYPES
        from firstepoch.llm.kernels import LayerShape, LayerWeights

        if self.caches is not None and all(a is b for a, b in zip(self.caches, caches)):
            return
        c, (slots, _, max_len, _) = self.config, caches[0].k.shape
        q8 = caches[0].k.dtype == torch.uint8  # rows of Q8_0 blocks (kv_cache_row), else fp16 numbers
        row, dtype = (kv_cache_row(c.head_dim, "q8_0"), torch.uint8) if q8 else (c.head_dim, torch.float16)
        for cache in caches:  # a slot per sequence: one, or those of a batch (forward_rows)
            k, v = cache.k, cache.v
            if k.shape != (slots, c.n_kv_heads, max_len, row) or k.shape != v.shape or \
                    k.dtype != dtype or v.dtype != dtype or not (k.is_contiguous() and v.is_contiguous()):
                raise ValueError(f"the KV cache has shape {tuple(k.shape)} and type {k.dtype}, not "
                                 f"{dtype} {(slots, c.n_kv_heads, max_len, row)}")
        pointers = (LayerWeights * len(self.layers))()
        for entry, layer, cache in zip(pointers, self.layers, caches):
            block = layer.block
            entry.attn_norm, entry.mlp_norm = block.attn_norm.weight.data_ptr(), block.mlp_norm.weight.data_ptr()
            matrices = layer.matrices
            (entry.w_q, entry.w_k, entry.w_v, entry.w_o, entry.w_gate, entry.w_up,
             entry.w_down) = (lin.blocks.data_ptr() for lin in matrices)
            # stacked: layers.c multiplies all the rows from the first pointer, so it gets the stacked array itself
            # (the linears' blocks are views of it, unless something replaced them since)
            if layer.qkv is not None:
                entry.w_q = layer.qkv.data_ptr()
            if layer.gate_up is not None:
                entry.w_gate = layer.gate_up.data_ptr()
            entry.qkv_stacked, entry.gate_up_stacked = layer.qkv is not None, layer.gate_up is not None
            entry.k_cache, entry.v_cache = cache.k.data_ptr(), cache.v.data_ptr()
            entry.types[:] = [BLOCK_TYPES[lin.qtype].code for lin in matrices]
            (entry.q_bias, entry.k_bias, entry.v_bias, entry.q_norm, entry.k_norm, entry.attn_post_norm,
             entry.mlp_post_norm) = (v.data_ptr() if v is not None else None for v in layer.vectors(c))
            cos, sin = self.rope[block.local]
            entry.cos, entry.sin = cos.data_ptr(), sin.data_ptr()
            entry.window = c.sliding_window if block.local else 0
        self.shape = LayerShape(c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_dim, max_len, c.norm_eps,
                                c.query_scale or 0.0, c.attn_softcap or 0.0, c.activation == "gelu_tanh",
                                self.interleaved, q8)
        self.caches, self.pointers, self.slots = list(caches), pointers, slots

    def unbind(self) -> None:
        self.caches = self.pointers = self.shape = None

    def forward(self, x: torch.Tensor, start: int) -> None:
        """All layers for the rows of x (contiguous fp32 (T, dim), updated in place) at positions
        [start, start + T), into the bound caches, `PREFILL_CHUNK` tokens a C call."""
        T = x.shape[0]
        if start < 0 or start + T > self.shape.max_len:  # the caller says why (InferenceTransformer.forward)
            raise ValueError(f"positions [{start}, {start + T}) are outside the bound KV cache")
        for first in range(0, T, PREFILL_CHUNK):
            self.kernels.forward_layers(x[first:first + PREFILL_CHUNK], self.pointers, self.shape, start + first)

    def forward_rows(self, x: torch.Tensor, positions: list[int], slots: list[int], decode: list[bool]) -> None:
        """Rows of several sequences (x (T, dim), updated in place): row t at positions[t] of cache slot
        slots[t], a decode step where decode[t]; a sequence's prefill rows in order. `PREFILL_CHUNK` rows a call."""
        if not (len(positions) == len(slots) == len(decode) == x.shape[0]):
            raise ValueError("one position, slot and decode flag a row")
        if any(not 0 <= p < self.shape.max_len for p in positions) or any(not 0 <= s < self.slots for s in slots):
            raise ValueError(f"rows outside the bound KV cache ({self.slots} slots of {self.shape.max_len} positions)")
        pos, slot = torch.tensor(positions, dtype=torch.int64), torch.tensor(slots, dtype=torch.int64)
        flags = torch.tensor(decode, dtype=torch.int32)
        for a in range(0, x.shape[0], PREFILL_CHUNK):
            b = a + PREFILL_CHUNK
            self.kernels.forward_rows(x[a:b], self.pointers, self.shape, pos[a:b], slot[a:b], flags[a:b])


def _attention_for(config: TransformerConfig):
    """The PyTorch path's written-out attention: for llama.cpp's arithmetic on one sequence on the CPU, layers.c's
    (its orders of summation too, which PyTorch's matmul does not keep), summing each head in the query's order:
    llama.cpp's for the architectures whose RoPE rotates halves; for llama files, stored for adjacent pairs,
    llama.cpp sums in that other order, which only the C layers keep. Else `explicit_attention`."""
    from firstepoch.llm.kernels import compiled_kernels

    kernels = compiled_kernels() if config.attention == "llamacpp_fp16" and config.head_dim % 16 == 0 else None

    def attend(q, k, v, scale, softcap=None, window=None, like_llamacpp=False):
        if kernels is not None and like_llamacpp and q.shape[0] == 1 and q.device.type == "cpu":
            return kernels.attention(q.float(), k, v, scale, softcap, window)
        return explicit_attention(q, k, v, scale, softcap, window, like_llamacpp)

    return attend


class InferenceTransformer(Transformer):
    """A `Transformer` whose layers run in C when its weights allow (see the module's doc).

    `c_layers` is the C path (`CLayers`) once `prepare_c_layers()` found it possible, else None: then, or for
    a batch or another device, `forward` is the PyTorch code.
    """

    def __init__(self, config: TransformerConfig, linear=None, embedding=None):
        super().__init__(config, linear, embedding, attend=_attention_for(config))
        self.c_layers: CLayers | None = None
        self.kv_cache_type = "f16"  # or "q8_0" (KV_CACHE_TYPES), set by LanguageModel.set_kv_cache

    def setup_cache(self, batch: int = 1, max_len: int | None = None, dtype=None) -> None:
        """For llama.cpp's arithmetic the KV cache holds fp16 numbers, as llama.cpp's does (half the memory of
        fp32), or with `kv_cache_type` "q8_0" rows of Q8_0 blocks (the C layers only); else the Transformer's
        own."""
        c = self.config
        if self.kv_cache_type == "q8_0":
            for layer in self.layers:
                layer.attn.cache = KVCache(batch, c.n_kv_heads, max_len or c.context,
                                           kv_cache_row(c.head_dim, "q8_0"), torch.uint8, self.norm.weight.device)
            return
        if dtype is None and c.attention == "llamacpp_fp16":
            dtype = torch.float16
        super().setup_cache(batch, max_len, dtype)

    def make_rope_tables(self) -> tuple[torch.Tensor, ...]:
        """For llama.cpp's arithmetic, the RoPE tables built by layers.c, whose powf, cosf and sinf are the C
        library's as llama.cpp's are (numpy's differ in the last bit of some); the PyTorch path and the C layers
        both read them. Else the Transformer's own."""
        from firstepoch.llm.kernels import compiled_kernels

        c, kernels = self.config, compiled_kernels()
        if kernels is None or c.attention != "llamacpp_fp16":
            return super().make_rope_tables()

        def rotate_half_layout(theta, *scaling):
            cos, sin = kernels.rope_tables(theta, c.head_dim, c.context, *scaling)
            return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)

        cos, sin = rotate_half_layout(c.rope_theta, c.rope_freq_factors, c.rope_scaling_factor, c.rope_attn_factor)
        local = c.rope_theta_local  # the local layers' own base, unscaled (Gemma 3), else the global tables
        return (cos, sin, *(rotate_half_layout(local) if local is not None else (cos, sin)))

    def prepare_c_layers(self, interleaved: bool = True) -> bool:
        """Fuse q/k/v and gate/up blocks (no copy kept) and enable the C layers; False if not possible.
        `interleaved`: see `CLayers.prepare`."""
        self.c_layers = CLayers.prepare(self, interleaved)
        return self.c_layers is not None

    def forward(self, ids: torch.Tensor, start: int = 0, last_only: bool = False) -> torch.Tensor:
        cache = self.layers[0].attn.cache
        if self.c_layers is None or ids.shape[0] != 1 or ids.device.type != "cpu" or (cache is None and start):
            if self.kv_cache_type != "f16":
                raise FirstEpochError(f"a {self.kv_cache_type} KV cache is read by firstepoch's C layers only: one "
                                      f"sequence of a GGUF model on the CPU")
            return super().forward(ids, start, last_only)
        c, T = self.config, ids.shape[1]
        self.check_fits(start, T)
        temporary = cache is None  # a whole text scored at once: a cache just for this pass
        if temporary:
            self.setup_cache(1, T)
        try:
            max_len = self.layers[0].attn.cache.k.shape[2]
            if start + T > max_len:
                raise FirstEpochError(f"positions up to {start + T} are past the KV cache ({max_len} positions); "
                                      f"call setup_cache with a larger max_len")
            if start < 0 or ids.min() < 0 or ids.max() >= c.vocab_size:
                raise FirstEpochError(f"token ids must be in [0, {c.vocab_size}) at positions >= 0")
            self.c_layers.bind([layer.attn.cache for layer in self.layers])
            x = self.embed(ids)[0].float().contiguous()  # (T, dim), updated in place layer by layer
            self.c_layers.forward(x, start)
            if last_only:
                x = x[-1:]
            normed = self.c_layers.kernels.rms_norm_rows(x, self.norm.weight, c.norm_eps)
            return self.capped(self.lm_head(normed)).unsqueeze(0)  # (1, T or 1, vocab)
        finally:
            if temporary:
                self.clear_cache()

    def forward_rows(self, ids: list[int], positions: list[int], slots: list[int], decode: list[bool],
                     wanted: list[int]) -> torch.Tensor:
        """Rows of several sequences in one pass (continuous batching), each in its own slot of the KV cache
        (`setup_cache(batch=slots)`): row t is token ids[t] at positions[t] of slot slots[t], a decode step where
        decode[t]. -> the logits of rows `wanted` (len(wanted), vocab). Each row's arithmetic is the one its
        sequence gets alone, so what a sequence generates does not depend on what it is batched with."""
        cache = self.layers[0].attn.cache
        if self.c_layers is None or cache is None:
            raise FirstEpochError("batched generation needs firstepoch's C layers (a GGUF model on the CPU) and a "
                                  "KV cache (setup_cache)")
        c = self.config
        if any(not 0 <= i < c.vocab_size for i in ids):
            raise FirstEpochError(f"token ids must be in [0, {c.vocab_size})")
        self.c_layers.bind([layer.attn.cache for layer in self.layers])
        x = self.embed(torch.tensor([ids]))[0].float().contiguous()
        self.c_layers.forward_rows(x, positions, slots, decode)
        normed = self.c_layers.kernels.rms_norm_rows(x[wanted].contiguous(), self.norm.weight, c.norm_eps)
        return self.capped(self.lm_head(normed))

    def clear_cache(self) -> None:
        super().clear_cache()
        if self.c_layers is not None:
            self.c_layers.unbind()
