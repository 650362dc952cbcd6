"""Linear layers for inference whose weights stay compact in memory, and GGUF quantization.

`QuantizedLinear` keeps a GGUF weight in its blocks (`blocktypes.BLOCK_TYPES`) for firstepoch's own CPU kernel
(`kernels/ggml_matmul.c`), or as bf16 for the other types (see BENCHMARKS.md, "LLM decode kernels").
Activations stay fp32 outside the matmul.

`quantize_gguf` rewrites a GGUF file as one of llama.cpp's mixtures (Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_1): the
K-quants by `kquantize`, the others by the gguf package's quantizers, so a person can compare size, speed and
perplexity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from firstepoch.errors import FirstEpochError
from firstepoch.llm.blocktypes import BLOCK_TYPES, dequantize_blocks
from firstepoch.llm.kquantize import quantize_k


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

@dataclass(frozen=True)
class Mixture:
    """A file type as llama.cpp's quantizer writes it: the matrices' type (the token embedding's too), the type of
    the attention values and FFN down-projections of the layers that get more bits (`_more_bits`), of the output
    (or the token embedding when the output is tied to it) and of a fused q/k/v matrix. A type whose blocks do not
    divide a row falls back as there. (llama.cpp has further rules for mixtures of experts, 70B models and
    architectures firstepoch does not run; they are not here.)"""

    file_type: str  # gguf.LlamaFileType member: MOSTLY_Q4_K_M, ...
    base: str
    more_bits: str
    output: str
    fused_qkv: str  # a fused attention q/k/v matrix (Phi-3's attn_qkv)


# the files `quantize --to` writes, by the names people know them by (q8 and q4 are the first two's short names)
MIXTURES = {"Q8_0": Mixture("MOSTLY_Q8_0", "Q8_0", "Q8_0", "Q8_0", "Q8_0"),
            "Q4_1": Mixture("MOSTLY_Q4_1", "Q4_1", "Q4_1", "Q6_K", "Q4_1"),
            "Q4_K_M": Mixture("MOSTLY_Q4_K_M", "Q4_K", "Q6_K", "Q6_K", "Q5_K"),
            "Q5_K_M": Mixture("MOSTLY_Q5_K_M", "Q5_K", "Q6_K", "Q6_K", "Q6_K"),
            "Q6_K": Mixture("MOSTLY_Q6_K", "Q6_K", "Q6_K", "Q6_K", "Q6_K")}
SHORT_NAMES = {"q8": "Q8_0", "q4": "Q4_1"}
# where rows are not a multiple of a K-quant's 256 weights, llama.cpp's quantizer takes these
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def quantize_gguf(source: str | Path, target: str, out: str | Path) -> Path:
    """Write `source` (a GGUF file) to `out` with its matrices quantized as the `target` mixture (`MIXTURES`:
    'Q4_K_M', 'Q5_K_M', 'Q6_K', 'Q8_0', or 'q8' and 'q4' for Q8_0 and Q4_1). Vectors (norms) stay F32."""
    import gguf

    from firstepoch.llm.gguf import read_gguf, tensor_array

    name = SHORT_NAMES.get(target, target.upper())
    if name not in MIXTURES:
        raise FirstEpochError(f"--to {target!r}: choose one of {', '.join([*SHORT_NAMES, *MIXTURES])}")
    mixture = MIXTURES[name]
    g = read_gguf(source)
    layers = int(g.metadata.get(f"{g.architecture}.block_count", 0))
    tied = "output.weight" not in g.tensors
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(partial), arch=g.architecture)
    _copy_metadata(g, writer, gguf)
    writer.add_file_type(gguf.LlamaFileType[mixture.file_type])
    for tensor_name, t in g.tensors.items():
        array = tensor_array(t)
        qtype = _target_type(tensor_name, array, mixture, layers, tied)
        writer.add_tensor(tensor_name, _quantize(array, qtype, gguf), raw_shape=array.shape if qtype == "F32" else None,
                          raw_dtype=gguf.GGMLQuantizationType[qtype])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _quantize(array: np.ndarray, qtype: str, gguf) -> np.ndarray:
    if qtype == "F32":
        return array.astype(np.float32)
    if qtype.endswith("_K"):
        return quantize_k(array.reshape(-1, array.shape[-1]), qtype).reshape(*array.shape[:-1], -1)
    return gguf.quants.quantize(array, gguf.GGMLQuantizationType[qtype])


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's layers that get more bits: the first and last eighth, and every third one between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def _target_type(name: str, array: np.ndarray, mixture: Mixture, layers: int, tied: bool) -> str:
    if array.ndim < 2 or array.shape[-1] % 32:
        return "F32"
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        qtype = mixture.output
    elif name.endswith("attn_qkv.weight"):
        qtype = mixture.fused_qkv
    elif name.endswith(("attn_v.weight", "ffn_down.weight")) and _more_bits(int(name.split(".")[1]), layers):
        qtype = mixture.more_bits
    else:
        qtype = mixture.base
    return K_FALLBACK[qtype] if qtype in K_FALLBACK and array.shape[-1] % 256 else qtype


def _copy_metadata(g, writer, gguf) -> None:
    skip = {"general.architecture", "general.file_type", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for name, types in g.types.items():  # the header read_gguf already parsed: the file is not read again
        if name in skip:
            continue
        sub_type = types[-1] if types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, g.metadata[name], types[0], sub_type=sub_type)
