"""firstepoch's own CPU kernels (block-quantized matmuls, the Transformer's layers for prefill and decode),
compiled on first use with the machine's C compiler and loaded with ctypes.

`compiled_kernels()` gives them as a `Kernels` object, each C function a method on tensors, or None (with one
warning) where no compiler is found or the build fails; callers then fall back to PyTorch's bf16 matmul. The
library is cached in firstepoch's data folder under a name made from the source's hash and the compiler flags,
so it is built once a machine.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("ggml_matmul.c", "layers.c", "kquantize.c")]
# -ffp-contract=off: no multiply-add fused unless written so (layers.c reproduces llama.cpp's rounding)
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-ffp-contract=off"]
# FIRSTEPOCH_KERNELS_ASAN=1: a debug build under AddressSanitizer, for the hostile-input tests; the process must
# start with the sanitizer's runtime preloaded (LD_PRELOAD=$(cc -print-file-name=libasan.so))
ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")
# tried in turn: a compiler without OpenMP (Apple's clang) still builds the kernels, single-threaded
FLAG_SETS = [FLAGS, [flag for flag in FLAGS if flag != "-fopenmp"]]


class LayerWeights(ctypes.Structure):
    """layers.c's layer_weights: one layer's arrays (norm weights, matrices, its KV cache), the
    `blocktypes.BlockType.code` of each matrix (q, k, v, o, gate, up, down), and whether q/k/v and gate/up are
    stacked in one array of one type."""
    _fields_ = [(name, ctypes.c_void_p) for name in ("attn_norm", "mlp_norm", "w_q", "w_k", "w_v", "w_o", "w_gate",
                                                      "w_up", "w_down", "k_cache", "v_cache")] + [
        ("types", ctypes.c_int * 7), ("qkv_stacked", ctypes.c_int), ("gate_up_stacked", ctypes.c_int)] + [
        (name, ctypes.c_void_p) for name in ("q_bias", "k_bias", "v_bias", "q_norm", "k_norm", "attn_post_norm",
                                             "mlp_post_norm", "cos", "sin")] + [("window", ctypes.c_int64)]


class LayerShape(ctypes.Structure):
    """layers.c's layer_shape: the sizes every layer shares, and the KV cache's length."""
    _fields_ = [(name, ctypes.c_int64) for name in ("dim", "n_heads", "n_kv", "head_dim", "hidden", "max_len")] + [
        ("eps", ctypes.c_float), ("query_scale", ctypes.c_float), ("attn_softcap", ctypes.c_float),
        ("gelu", ctypes.c_int), ("interleaved", ctypes.c_int), ("kv_q8", ctypes.c_int)]


class Kernels:
    """The compiled kernels, each a method. They trust the sizes they are given: callers check shapes first.

    `library` is the ctypes library itself, argument types set (for tests that call a function wrongly on
    purpose).
    """

    def __init__(self, library: ctypes.CDLL):
        self.library = library

    def matmul(self, kind, blocks: torch.Tensor, in_features: int, x: torch.Tensor) -> torch.Tensor:
        """x (tokens, in_features) fp32 contiguous times the weight whose rows are `blocks` (out_features, row
        bytes) of `kind` (a blocktypes.BlockType), the activations quantized to 8 bits as llama.cpp does ->
        (tokens, out_features) fp32."""
        tokens, out_features = x.shape[0], blocks.shape[0]
        y = torch.empty(tokens, out_features)
        scratch = torch.empty(tokens * kind.activation_row_bytes(in_features), dtype=torch.uint8)
        getattr(self.library, kind.kernel)(blocks.data_ptr(), out_features, in_features, x.data_ptr(), tokens,
                                           y.data_ptr(), scratch.data_ptr(), torch.get_num_threads())
        return y

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float | None = None,
                  window: int | None = None, like_llamacpp: bool = True) -> torch.Tensor:
        """`models.transformer.explicit_attention` for one sequence (q (1, nh, T, hs) fp32, k/v (1, nkv, S, hs)
        fp16, or fp32 holding fp16 values) in llama.cpp's arithmetic, its orders of summation included (layers.c's
        attend)."""
        _, n_heads, T, head_dim = q.shape
        n_kv, n_pos = k.shape[1], k.shape[2]
        if not (like_llamacpp and q.shape[0] == 1 and k.shape == v.shape and k.shape[-1] == head_dim and n_pos >= T
                and head_dim % 16 == 0 and n_heads % n_kv == 0 and q.dtype == torch.float32
                and k.dtype in (torch.float16, torch.float32) and v.dtype == k.dtype):
            raise ValueError(f"attention of q {tuple(q.shape)} over k {tuple(k.shape)} is not one sequence's")
        q, k, v = q.contiguous(), k[0].half().contiguous(), v[0].half().contiguous()
        out = torch.empty_like(q)
        threads = torch.get_num_threads()
        work = torch.empty(threads * (n_pos + 4 * 16 * head_dim))
        self.library.attention_rows(q.data_ptr(), k.data_ptr(), v.data_ptr(), n_heads, n_kv, head_dim, n_pos * head_dim,
                                    n_pos, T, scale, softcap or 0.0, window or 0, out.data_ptr(), work.data_ptr(),
                                    threads)
        return out

    def rms_norm_rows(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """llama.cpp's RMSNorm of each row of x (rows, n) fp32 contiguous, times `weight` (n,) fp32."""
        out = torch.empty_like(x)
        self.library.rms_norm_rows(x.data_ptr(), weight.data_ptr(), eps, x.shape[1], x.shape[0], out.data_ptr())
        return out

    def rope_tables(self, theta: float, head_dim: int, length: int, freq_factors: list[float] | None = None,
                    scaling_factor: float = 1.0, attn_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, each (length, head_dim / 2), built as llama.cpp builds its angles (each divided by its
        frequency factor when `freq_factors` are given, and times 1 / `scaling_factor`), times `attn_factor`."""
        cos, sin = torch.empty(length, head_dim // 2), torch.empty(length, head_dim // 2)
        factors = torch.tensor(freq_factors, dtype=torch.float32) if freq_factors is not None else None
        if factors is not None and factors.numel() != head_dim // 2:
            raise ValueError(f"{factors.numel()} frequency factors for a head of {head_dim}")
        self.library.rope_tables_like_llamacpp(theta, head_dim, length, factors.data_ptr() if factors is not None
                                               else None, 1.0 / scaling_factor, attn_factor, cos.data_ptr(),
                                               sin.data_ptr())
        return cos, sin

    def _buffers(self, shape: LayerShape, T: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        from firstepoch.llm.blocktypes import ACTIVATION_BYTES_PER_VALUE

        threads = torch.get_num_threads()
        work = torch.empty(self.library.layers_work_size(ctypes.byref(shape), T, threads))
        widest = max(shape.dim, shape.hidden, shape.n_heads * shape.head_dim)
        return work, torch.empty(math.ceil(T * widest * ACTIVATION_BYTES_PER_VALUE), dtype=torch.uint8), threads

    def forward_layers(self, x: torch.Tensor, layers, shape: LayerShape, start: int) -> None:
        """Every layer, in one call, for the rows of x (T, dim) fp32 contiguous at positions [start, start + T),
        x updated in place; `layers` is a ctypes array of `LayerWeights` whose KV caches hold `shape.max_len`
        positions and whose RoPE tables come from `rope_tables`."""
        work, scratch, threads = self._buffers(shape, x.shape[0])
        self.library.forward_layers(x.data_ptr(), layers, len(layers), ctypes.byref(shape), start, x.shape[0],
                                    work.data_ptr(), scratch.data_ptr(), threads)

    def forward_rows(self, x: torch.Tensor, layers, shape: LayerShape, positions: torch.Tensor, slots: torch.Tensor,
                     decode: torch.Tensor) -> None:
        """`forward_layers` for rows of several sequences: row t of x at positions[t] of cache slot slots[t]
        (int64, checked by the caller against the caches), a decode step where decode[t] (int32)."""
        work, scratch, threads = self._buffers(shape, x.shape[0])
        self.library.forward_rows(x.data_ptr(), layers, len(layers), ctypes.byref(shape), positions.data_ptr(),
                                  slots.data_ptr(), decode.data_ptr(), x.shape[0], work.data_ptr(), scratch.data_ptr(),
                                  threads)


@cache
def compiled_kernels() -> Kernels | None:
    """The kernels, built on first use; None (with one warning) where they cannot be, or FIRSTEPOCH_KERNELS=0."""
    if os.environ.get("FIRSTEPOCH_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")  # CC may be "ccache gcc"
    if compiler is None:
        warnings.warn("no C compiler found: quantized LLM weights are expanded to bf16 (slower, more memory); "
                      "install gcc for firstepoch's quantized kernels", stacklevel=2)
        return None
    asan = os.environ.get("FIRSTEPOCH_KERNELS_ASAN", "0") == "1"
    if asan and "asan" not in os.environ.get("LD_PRELOAD", ""):  # gcc's libasan, clang's libclang_rt.asan
        raise RuntimeError("FIRSTEPOCH_KERNELS_ASAN=1 needs the sanitizer's runtime loaded first: run with "
                           "LD_PRELOAD=$(cc -print-file-name=libasan.so)")  # else loading the library aborts
    library = _build(compiler, ASAN_FLAGS if asan else ())
    if library is None:
        return None
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        warnings.warn(f"loading firstepoch's quantized kernels failed ({exc}); using bf16 weights", stacklevel=2)
        return None
    from firstepoch.llm.blocktypes import BLOCK_TYPES

    pointer, size = ctypes.c_void_p, ctypes.c_int64
    signatures = {kind.kernel: (None, [pointer, size, size, pointer, size, pointer, pointer, ctypes.c_int])
                  for kind in BLOCK_TYPES.values()}
    signatures.update({
        "rms_norm_rows": (None, [pointer, pointer, ctypes.c_float, size, size, pointer]),
        "rope_tables_like_llamacpp": (None, [ctypes.c_float, size, size, pointer, ctypes.c_float, ctypes.c_float,
                                             pointer, pointer]),
        "layers_work_size": (size, [pointer, size, ctypes.c_int]),
        "attention_rows": (None, [pointer, pointer, pointer, size, size, size, size, size, size, ctypes.c_float,
                                  ctypes.c_float, size, pointer, pointer, ctypes.c_int]),
        "forward_layers": (None, [pointer, pointer, size, pointer, size, size, pointer, pointer, ctypes.c_int]),
        "quantize_k_blocks": (None, [ctypes.c_int, pointer, pointer, size, ctypes.c_int]),
        "forward_rows": (None, [pointer, pointer, size, pointer, pointer, pointer, pointer, size, pointer, pointer,
                                ctypes.c_int]),
    })
    for name, (restype, argtypes) in signatures.items():
        getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
    return Kernels(lib)


def _build(compiler: str, extra: tuple[str, ...] = ()) -> Path | None:
    """The cached library for this source and compiler (and `extra` flags), built if missing; None (with a
    warning) on failure."""
    from firstepoch.paths import home

    source = b"".join(path.read_bytes() for path in SOURCES)
    errors = []
    # -march=native: the key names this CPU too, for a home folder shared by machines
    for flags in ([*flags, *extra] for flags in FLAG_SETS):
        key = hashlib.sha256(source + " ".join([compiler, *flags, _cpu()]).encode()).hexdigest()[:16]
        library = home() / "kernels" / f"firstepoch-kernels-{key}.so"
        if library.is_file():
            return library
        library.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
        os.close(fd)
        try:
            result = subprocess.run([*shlex.split(compiler), *flags, *map(str, SOURCES), "-o", partial, "-lm"],
                                    capture_output=True, text=True)
        except OSError as exc:
            result = subprocess.CompletedProcess([], 1, "", str(exc))
        if result.returncode == 0:
            os.replace(partial, library)  # another process sees no library or a whole one
            return library
        os.unlink(partial)
        errors.append((result.stderr.strip().splitlines() or ["?"])[0])
    warnings.warn(f"building firstepoch's quantized kernels failed ({errors[0]}); using bf16 weights", stacklevel=3)
    return None


def _cpu() -> str:
    """The machine and its CPU's instruction-set flags (Linux), so a library built for one CPU is not loaded
    on another."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}"
