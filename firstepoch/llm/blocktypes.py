"""The GGUF block types firstepoch multiplies as they are stored: one table (`BLOCK_TYPES`) of each type's
sizes, its C kernel and its dequantization, which the kernels, the decoder and `QuantizedLinear` all read."""
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


def _dequantize_q4_1(b: torch.Tensor) -> torch.Tensor:  # scale, minimum, 16 bytes of nibbles
    return _nibbles(b) * _half(b, 0) + _half(b, 2)


def _dequantize_q8_0(b: torch.Tensor) -> torch.Tensor:  # scale, 32 signed bytes
    return b[..., 2:].contiguous().view(torch.int8).float() * _half(b, 0)


@dataclass(frozen=True)
class BlockType:
    """A GGUF block type that firstepoch's C kernels multiply as it is stored, 32 weights a block. A new type is
    one entry of `BLOCK_TYPES` (and its kernel in kernels/ggml_matmul.c at `code` in layers.c's MATMULS)."""

    name: str  # as gguf.GGMLQuantizationType names it
    block_bytes: int  # bytes of one block of 32 weights
    activation_bytes: int  # bytes of one block of the 8-bit activations its kernel quantizes into
    code: int  # its index in layers.c's MATMULS table
    dequantize: Callable[[torch.Tensor], torch.Tensor]  # blocks (..., n, block_bytes) uint8 -> (..., n, 32) fp32

    @property
    def kernel(self) -> str:
        """The C function that multiplies it: matmul_q4_0, ..."""
        return f"matmul_{self.name.lower()}"

    def row_bytes(self, in_features: int) -> int:
        return in_features // 32 * self.block_bytes


# the one table of block types: the kernels' names (`kernel`) and layers.c's MATMULS array (by `code`, in this
# order) follow it; a type added here needs its function in both C files
BLOCK_TYPES = {t.name: t for t in (BlockType("Q4_0", 18, 34, 0, _dequantize_q4_0),
                                   BlockType("Q4_1", 20, 36, 1, _dequantize_q4_1),
                                   BlockType("Q8_0", 34, 34, 2, _dequantize_q8_0))}


def dequantize_blocks(blocks: torch.Tensor, qtype: str, in_features: int) -> torch.Tensor:
    """Rows of GGUF blocks (..., bytes per row) as fp32 (..., in_features), with torch ops (any device)."""
    kind = BLOCK_TYPES[qtype]
    b = blocks.reshape(*blocks.shape[:-1], in_features // 32, kind.block_bytes)
    return kind.dequantize(b).reshape(*blocks.shape[:-1], in_features)
