"""The GGUF block types firstepoch multiplies as they are stored: one table (`BLOCK_TYPES`) of each type's
sizes, its C kernel and its dequantization, which the kernels, the decoder and `QuantizedLinear` all read.
Each dequantization computes what the gguf package's does, in the same fp32 operations (tests/llm/test_quant.py
checks them bit for bit)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def _half(b: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 number at byte `at` of each block (..., blocks, bytes) as fp32 (..., blocks, 1)."""
    return b[..., at:at + 2].contiguous().view(torch.float16).float()


def _nibbles(b: torch.Tensor) -> torch.Tensor:
    """The 32 4-bit values of each block's last 16 bytes: element j is byte j's low nibble, j + 16 its high one."""
    packed = b[..., -16:]
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1).float()


def _dequantize_q4_0(b: torch.Tensor) -> torch.Tensor:  # scale, 16 bytes of nibbles offset by 8
    return (_nibbles(b) - 8) * _half(b, 0)


IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)  # a non-linear 4-bit grid


def _dequantize_iq4_nl(b: torch.Tensor) -> torch.Tensor:  # scale, 16 bytes of nibbles indexing IQ4_NL_VALUES
    packed = b[..., -16:].long()
    table = torch.tensor(IQ4_NL_VALUES, dtype=torch.float32, device=b.device)
    return _half(b, 0) * table[torch.cat([packed & 0x0F, packed >> 4], dim=-1)]


def _dequantize_q4_1(b: torch.Tensor) -> torch.Tensor:  # scale, minimum, 16 bytes of nibbles
    return _nibbles(b) * _half(b, 0) + _half(b, 2)


def _dequantize_q8_0(b: torch.Tensor) -> torch.Tensor:  # scale, 32 signed bytes
    return b[..., 2:].contiguous().view(torch.int8).float() * _half(b, 0)


def _bits(b: torch.Tensor, n: int) -> torch.Tensor:
    """The n bits of each block's bytes b (..., n / 8), least significant first, as 0/1 (..., n)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=b.device)
    return ((b.unsqueeze(-1) >> shifts) & 1).reshape(*b.shape[:-1], n)


def _dequantize_q5_0(b: torch.Tensor) -> torch.Tensor:  # scale, 32 fifth bits, 16 bytes of nibbles; offset 16
    q = _nibbles(b) + 16 * _bits(b[..., 2:6], 32).float()
    return _half(b, 0) * (q - 16)


def _dequantize_q5_1(b: torch.Tensor) -> torch.Tensor:  # scale, minimum, 32 fifth bits, 16 bytes of nibbles
    q = _nibbles(b) + 16 * _bits(b[..., 4:8], 32).float()
    return _half(b, 0) * q + _half(b, 2)


def _scales_and_mins(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K's and Q5_K's 8 six-bit scales and minimums from their 12 bytes (..., 12) -> two (..., 8) fp32."""
    d, m, both = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    scales = torch.cat([d & 0x3F, (both & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mins = torch.cat([m & 0x3F, (both >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return scales.float(), mins.float()


def _k_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """128 bytes -> 256 values: each 32 bytes give 32 low nibbles, then their 32 high nibbles."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 1, 32)
    shifts = torch.tensor([0, 4], dtype=torch.uint8, device=qs.device).reshape(2, 1)
    return ((chunks >> shifts) & 0x0F).reshape(*qs.shape[:-1], 8, 32)


def _dequantize_k(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K and Q5_K: d * scale * q - dmin * min for 8 sub-blocks of 32, q (..., 8, 32) fp32."""
    scales, mins = _scales_and_mins(b[..., 4:16])
    d, dm = (_half(b, 0) * scales).unsqueeze(-1), (_half(b, 2) * mins).unsqueeze(-1)
    return (d * q - dm).reshape(*b.shape[:-1], 256)


def _dequantize_q4_k(b: torch.Tensor) -> torch.Tensor:  # d, dmin, 12 bytes of scales and mins, 128 of nibbles
    return _dequantize_k(b, _k_nibbles(b[..., 16:144]).float())


def _dequantize_q5_k(b: torch.Tensor) -> torch.Tensor:  # ... 32 bytes of fifth bits before the nibbles
    high = _bits(b[..., 16:48], 256).reshape(*b.shape[:-1], 32, 8).transpose(-1, -2)  # sub-block j: bit j
    return _dequantize_k(b, (_k_nibbles(b[..., 48:176]) | (high << 4)).float())


def _dequantize_q2_k(b: torch.Tensor) -> torch.Tensor:  # 16 bytes of 4-bit scales and minimums, 64 of 2-bit, d, dmin
    scales, lead = b[..., 0:16], b.shape[:-1]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).reshape(4, 1)
    q = ((b[..., 16:80].reshape(*lead, 2, 1, 32) >> shifts) & 0x03).reshape(*lead, 16, 16).float()
    d = (_half(b, 80) * (scales & 0x0F).float()).unsqueeze(-1)  # (..., 16, 1)
    m = (_half(b, 82) * (scales >> 4).float()).unsqueeze(-1)
    return (d * q - m).reshape(*lead, 256)


def _dequantize_q3_k(b: torch.Tensor) -> torch.Tensor:  # 32 bytes of high bits, 64 of 2-bit values, 12 scales, d
    hmask, qs, packed, lead = b[..., 0:32], b[..., 32:96], b[..., 96:108], b.shape[:-1]

    def shifts(*by):
        return torch.tensor(by, dtype=torch.uint8, device=b.device).reshape(len(by), 1)

    low = packed[..., 0:8].unsqueeze(-2) >> shifts(0, 4)
    high = packed[..., 8:12].unsqueeze(-2) >> shifts(0, 2, 4, 6)
    scales = ((low.reshape(*lead, 16) & 0x0F) | ((high.reshape(*lead, 16) & 0x03) << 4)).to(torch.int8) - 32
    two = (qs.reshape(*lead, 2, 1, 32) >> shifts(0, 2, 4, 6)) & 0x03  # (..., 2, 4, 32): weight 128 j + 32 k + l
    third = (hmask.unsqueeze(-2) >> shifts(*range(8))) & 0x01  # clear: the weight is 4 less
    q = two.reshape(*lead, 16, 16).to(torch.int8) - ((third ^ 1) << 2).reshape(*lead, 16, 16).to(torch.int8)
    d = (_half(b, 108) * scales.float()).unsqueeze(-1)  # (..., 16, 1)
    return (d * q.float()).reshape(*lead, 256)


def _dequantize_q6_k(b: torch.Tensor) -> torch.Tensor:  # 128 bytes of low nibbles, 64 of 2-bit pairs, 16 scales, d
    ql = b[..., 0:128].reshape(*b.shape[:-1], 2, 1, 64)
    low = (ql >> torch.tensor([0, 4], dtype=torch.uint8, device=b.device).reshape(2, 1)) & 0x0F
    qh = b[..., 128:192].reshape(*b.shape[:-1], 2, 1, 32)
    high = (qh >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).reshape(4, 1)) & 0x03
    q = (low.reshape(*b.shape[:-1], 8, 32) | (high.reshape(*b.shape[:-1], 8, 32) << 4)).to(torch.int8) - 32
    scales = b[..., 192:208].contiguous().view(torch.int8).float()
    d = (_half(b, 208) * scales).unsqueeze(-1)  # (..., 16, 1)
    return (d * q.reshape(*b.shape[:-1], 16, 16).float()).reshape(*b.shape[:-1], 256)


@dataclass(frozen=True)
class BlockType:
    """A GGUF block type that firstepoch's C kernels multiply as it is stored. A new type is one entry of
    `BLOCK_TYPES` (and its kernel in kernels/ggml_matmul.c at `code` in layers.c's MATMULS)."""

    name: str  # as gguf.GGMLQuantizationType names it
    weights: int  # weights a block: 32, or 256 for the K-quants' super-blocks
    block_bytes: int  # bytes of one block
    activation_bytes: int  # bytes of the 8-bit activations its kernel quantizes one block's worth of inputs into
    code: int  # its index in layers.c's MATMULS table
    dequantize: Callable[[torch.Tensor], torch.Tensor]  # blocks (..., n, block_bytes) uint8 -> (..., n, weights)

    @property
    def kernel(self) -> str:
        """The C function that multiplies it: matmul_q4_0, ..."""
        return f"matmul_{self.name.lower()}"

    def row_bytes(self, in_features: int) -> int:
        return in_features // self.weights * self.block_bytes

    def activation_row_bytes(self, in_features: int) -> int:
        return in_features // self.weights * self.activation_bytes


# the one table of block types: the kernels' names (`kernel`) and layers.c's MATMULS array (by `code`, in this
# order) follow it; a type added here needs its function in both C files
Q8_K_BYTES = 292  # the K-quants' activations: 256 int8 values, a float scale and 16 int16 sums
# the 32-weight types' activations, as prefill's tiles of four rows hold them with AVX-512 (ggml_matmul.c): a
# row's 32 int8 values, its float scale in 8 lanes, and 8 int32 offsets (Q8_0) or the float of d * sum (Q8_1);
# one-row blocks (34 and 36 bytes) are smaller
Q8_0_TILE_BYTES, Q8_1_TILE_BYTES = 96, 68
BLOCK_TYPES = {t.name: t for t in (BlockType("Q4_0", 32, 18, Q8_0_TILE_BYTES, 0, _dequantize_q4_0),
                                   BlockType("Q4_1", 32, 20, Q8_1_TILE_BYTES, 1, _dequantize_q4_1),
                                   BlockType("Q8_0", 32, 34, Q8_0_TILE_BYTES, 2, _dequantize_q8_0),
                                   BlockType("Q5_0", 32, 22, Q8_0_TILE_BYTES, 3, _dequantize_q5_0),
                                   BlockType("Q4_K", 256, 144, Q8_K_BYTES, 4, _dequantize_q4_k),
                                   BlockType("Q5_K", 256, 176, Q8_K_BYTES, 5, _dequantize_q5_k),
                                   BlockType("Q6_K", 256, 210, Q8_K_BYTES, 6, _dequantize_q6_k),
                                   BlockType("Q5_1", 32, 24, Q8_1_TILE_BYTES, 7, _dequantize_q5_1),
                                   BlockType("Q3_K", 256, 110, Q8_K_BYTES, 8, _dequantize_q3_k),
                                   BlockType("Q2_K", 256, 84, Q8_K_BYTES, 9, _dequantize_q2_k),
                                   BlockType("IQ4_NL", 32, 18, Q8_0_TILE_BYTES, 10, _dequantize_iq4_nl))}
# the most bytes of 8-bit activations any kernel needs per input value (scratch sizes)
ACTIVATION_BYTES_PER_VALUE = max(t.activation_bytes / t.weights for t in BLOCK_TYPES.values())


def dequantize_blocks(blocks: torch.Tensor, qtype: str, in_features: int) -> torch.Tensor:
    """Rows of GGUF blocks (..., bytes per row) as fp32 (..., in_features), with torch ops (any device)."""
    kind = BLOCK_TYPES[qtype]
    b = blocks.reshape(*blocks.shape[:-1], in_features // kind.weights, kind.block_bytes)
    return kind.dequantize(b).reshape(*blocks.shape[:-1], in_features)
