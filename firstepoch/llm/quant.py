"""Linear layers for inference whose weights stay compact in memory, and GGUF quantization.

`QuantizedLinear` keeps a GGUF weight in its blocks (`blocktypes.BLOCK_TYPES`) for firstepoch's own CPU kernel
(`kernels/ggml_matmul.c`), or as bf16 for the other types (see BENCHMARKS.md, "LLM decode kernels").
Activations stay fp32 outside the matmul.

`quantize_gguf` rewrites a GGUF file's matrices as Q8_0 or Q4_1 with the gguf package's quantizers,
so a person can compare size, speed and perplexity.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from firstepoch.errors import FirstEpochError
from firstepoch.llm.blocktypes import BLOCK_TYPES, dequantize_blocks


class QuantizedLinear(nn.Module):
    """y = x W^T for a frozen weight (out_features, in_features) kept compact in memory; no bias.

    Either GGUF blocks (`BLOCK_TYPES`) multiplied by firstepoch's own CPU kernel, which quantizes the
    activations to 8 bits as llama.cpp does, or a bf16 matrix for PyTorch's matmul (other types, other
    devices, or no C compiler). Shapes: x (..., in_features) fp32 -> (..., out_features) fp32.
    """

    def __init__(self, weight: torch.Tensor | None = None, *, blocks: torch.Tensor | None = None,
                 qtype: str | None = None, in_features: int | None = None):
        super().__init__()
        self.qtype = qtype if blocks is not None else "BF16"
        self.source = None  # the GGUF tensor the blocks are a view of, if any
        if blocks is not None:
            if qtype not in BLOCK_TYPES or in_features is None or in_features % BLOCK_TYPES[qtype].weights or \
                    blocks.dim() != 2 or \
                    blocks.dtype != torch.uint8 or blocks.shape[1] != BLOCK_TYPES[qtype].row_bytes(in_features):
                raise ValueError(f"{qtype} blocks of shape {tuple(blocks.shape)} do not hold rows of "
                                 f"{in_features} weights")  # the kernel would read past them
            self.out_features, self.in_features = blocks.shape[0], in_features
            self.register_buffer("blocks", blocks.contiguous())
            self.weight = None
        else:
            self.out_features, self.in_features = weight.shape
            self.register_buffer("weight", weight.to(torch.bfloat16).contiguous())
            self.blocks = None

    @classmethod
    def from_gguf(cls, tensor, rows=None) -> "QuantizedLinear":
        """From a gguf `ReaderTensor`; `rows(t)` reorders the rows (a torch op on dim 0) if given."""
        from firstepoch.llm.gguf import tensor_array
        from firstepoch.llm.kernels import compiled_kernels

        qtype, in_features = tensor.tensor_type.name, int(tensor.shape[0])
        if qtype in BLOCK_TYPES and in_features % BLOCK_TYPES[qtype].weights == 0 and compiled_kernels() is not None:
            # the file's own pages (memory-mapped, like llama.cpp's mmap): loading copies nothing
            raw = torch.from_numpy(tensor.data).view(torch.uint8).reshape(int(tensor.shape[1]), -1)
            if rows is None:
                linear = cls(blocks=raw, qtype=qtype, in_features=in_features)
                linear.source = tensor  # whose pages `release` hands back once a copy is made (see decoder._fuse)
                return linear
            linear = cls(blocks=rows(raw), qtype=qtype, in_features=in_features)
        else:
            dense = torch.from_numpy(np.array(tensor_array(tensor), dtype=np.float32, copy=True))
            linear = cls(rows(dense) if rows else dense)
        tensor.release()  # copied: the mapped pages are no longer needed
        return linear

    def release_source(self) -> None:
        """After the blocks were copied elsewhere: give the file pages they were read from back to the OS."""
        if self.source is not None:
            self.source.release()
            self.source = None

    def dense(self) -> torch.Tensor:
        """The weight as fp32 (out_features, in_features)."""
        if self.blocks is None:
            return self.weight.float()
        return dequantize_blocks(self.blocks, self.qtype, self.in_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight as fp32: an embedding lookup in a table shared with the output layer."""
        if self.blocks is None:
            return self.weight[ids].float()
        return dequantize_blocks(self.blocks[ids], self.qtype, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input of shape {tuple(x.shape)} for a linear layer of {self.in_features} inputs")
        if self.blocks is None:
            return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
        if x.device.type != "cpu":
            return F.linear(x, self.dense().to(x.device, x.dtype))
        from firstepoch.llm.kernels import compiled_kernels

        flat = x.reshape(-1, self.in_features).float().contiguous()
        y = compiled_kernels().matmul(BLOCK_TYPES[self.qtype], self.blocks, self.in_features, flat)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, type={self.qtype}"


# --------------------------------------------------------------------------------------- quantize a file

QUANT_TARGETS = {"q8": "Q8_0", "q4": "Q4_1"}


def quantize_gguf(source: str | Path, target: str, out: str | Path) -> Path:
    """Write `source` (a GGUF file) to `out` with every matrix quantized to `target` ('q8' or 'q4').

    Vectors (norms) stay F32; under 'q4' the token embedding becomes Q8_0, as llama.cpp keeps it higher.
    """
    import gguf

    from firstepoch.llm.gguf import read_gguf, tensor_array

    if target not in QUANT_TARGETS:
        raise FirstEpochError(f"--to {target!r}: choose one of {', '.join(QUANT_TARGETS)}")
    g = read_gguf(source)
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(partial), arch=g.architecture)
    _copy_metadata(g, writer, gguf)
    for name, t in g.tensors.items():
        array = tensor_array(t)
        qtype = _target_type(name, array, QUANT_TARGETS[target], gguf)
        data = gguf.quants.quantize(array, qtype) if qtype.name != "F32" else array.astype(np.float32)
        writer.add_tensor(name, data, raw_shape=data.shape if qtype.name == "F32" else None, raw_dtype=qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _target_type(name: str, array: np.ndarray, target: str, gguf):
    if array.ndim < 2 or array.shape[-1] % 32:
        return gguf.GGMLQuantizationType.F32
    if name == "token_embd.weight" and target == "Q4_1":
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType[target]


def _copy_metadata(g, writer, gguf) -> None:
    skip = {"general.architecture", "general.file_type", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for name, types in g.types.items():  # the header read_gguf already parsed: the file is not read again
        if name in skip:
            continue
        sub_type = types[-1] if types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, g.metadata[name], types[0], sub_type=sub_type)
