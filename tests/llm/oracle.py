"""llama.cpp (llama-cpp-python), the oracle of the GGUF tests, on its plain CPU path.

Without `use_extra_bufts`, llama.cpp multiplies every weight with its vec_dot kernels, whose arithmetic ours
follows. With them it repacks weights for other kernels: AMX on Intel Xeons (which segfaults in this version on
the first decode) and AVX2/AVX-512 interleaved blocks (which sum in another order, and change their results
with the thread count). Its tiled K-quant kernel for prefills of 8 rows or more (GGML_CPU_TILED_MM) is off too:
it sums in another order than its vec_dot functions, which ours follow; matching it is not done yet."""
from __future__ import annotations

import os
from unittest import mock

os.environ["GGML_CPU_TILED_MM"] = "0"  # read once, at llama.cpp's first K-quant product in this process

import pytest


def llama_cpp_model(path, **kwargs):
    """`llama_cpp.Llama(path, **kwargs)` without weight repacking; the calling test is skipped where
    llama-cpp-python is not installed."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make test installs it)")
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def plain():
        params = defaults()
        params.use_extra_bufts = False
        return params

    # Llama() takes its model parameters from this function and has no argument for this one
    with mock.patch.object(llama_cpp.llama_cpp, "llama_model_default_params", plain):
        return llama_cpp.Llama(str(path), **{"verbose": False, **kwargs})


# llama.cpp's own block functions, through its ggml libraries (shipped in llama-cpp-python): the quantizer of the
# K-quants (which the gguf package cannot write) and the CPU backend's activation quantizers and dot products
ACTIVATIONS = {"Q4_0": "q8_0", "Q4_1": "q8_1", "Q8_0": "q8_0", "Q5_0": "q8_0", "Q5_1": "q8_1", "Q4_K": "q8_K",
               "Q5_K": "q8_K", "Q6_K": "q8_K", "Q3_K": "q8_K",
               "Q2_K": "q8_K", "IQ4_NL": "q8_0"}


def _ggml():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make test installs it)")
    import ctypes
    from pathlib import Path

    folder = Path(llama_cpp.__file__).parent / "lib"
    base, cpu = ctypes.CDLL(str(folder / "libggml-base.so")), ctypes.CDLL(str(folder / "libggml-cpu.so"))
    cpu.ggml_cpu_init()  # its fp16 tables
    return ctypes, base, cpu


def ggml_quantize(w, qtype: str):
    """Rows of fp32 `w` (n, k) in `qtype` blocks (n, row bytes) uint8, by llama.cpp's reference quantizer."""
    import numpy as np

    from firstepoch.llm.blocktypes import BLOCK_TYPES

    ctypes, base, _ = _ggml()
    w = np.ascontiguousarray(w, dtype=np.float32)
    raw = np.zeros((w.shape[0], BLOCK_TYPES[qtype].row_bytes(w.shape[1])), np.uint8)
    quantize = getattr(base, f"quantize_row_{qtype.lower().replace('_k', '_K')}_ref")
    quantize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    quantize(w.ctypes.data, raw.ctypes.data, w.size)
    return raw


def ggml_matmul(raw, x, qtype: str):
    """x (T, k) fp32 times the rows of `raw` (n, row bytes) as llama.cpp's CPU backend computes it: each row of x
    quantized to the type's 8-bit activation blocks, then its vec_dot with each weight row -> (T, n)."""
    import numpy as np

    from firstepoch.llm.blocktypes import BLOCK_TYPES

    ctypes, _, cpu = _ggml()
    x = np.ascontiguousarray(x, dtype=np.float32)
    k, act = x.shape[1], ACTIVATIONS[qtype]
    activations = np.zeros((x.shape[0], BLOCK_TYPES[qtype].activation_row_bytes(k)), np.uint8)
    quantize = getattr(cpu, f"quantize_row_{act}")
    quantize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    dot = getattr(cpu, f"ggml_vec_dot_{qtype.lower().replace('_k', '_K')}_{act}")
    dot.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    out, value = np.zeros((x.shape[0], raw.shape[0]), np.float32), ctypes.c_float()
    for t in range(x.shape[0]):
        quantize(x[t].ctypes.data, activations[t].ctypes.data, k)
        for n in range(raw.shape[0]):
            dot(k, ctypes.byref(value), 0, raw[n].ctypes.data, 0, activations[t].ctypes.data, 0, 1)
            out[t, n] = value.value
    return out
