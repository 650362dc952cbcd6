"""firstepoch's own CPU kernels (block-quantized matmuls, the Transformer's layers for prefill and decode), compiled on first use with the machine's C compiler and loaded with ctypes.

`ggml_matmul()` gives the compiled library, or None (with one warning) where no compiler is found or the
build fails; callers then fall back to PyTorch's bf16 matmul. The library is cached in firstepoch's data
folder under a name made from the source's hash and the compiler flags, so it is built once a machine.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

SOURCES = [Path(__file__).with_name(name) for name in ("ggml_matmul.c", "layers.c")]
# -ffp-contract=off: no multiply-add fused unless written so (layers.c reproduces llama.cpp's rounding)
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-ffp-contract=off"]
# FIRSTEPOCH_KERNELS_ASAN=1: a debug build under AddressSanitizer, for the hostile-input tests; the process must
# start with the sanitizer's runtime preloaded (LD_PRELOAD=$(cc -print-file-name=libasan.so))
ASAN_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")
# tried in turn: a compiler without OpenMP (Apple's clang) still builds the kernels, single-threaded
FLAG_SETS = [FLAGS, [flag for flag in FLAGS if flag != "-fopenmp"]]



@cache
def ggml_matmul() -> ctypes.CDLL | None:
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
    from firstepoch.llm.quant import BLOCK_TYPES

    for name in (kind.kernel for kind in BLOCK_TYPES.values()):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    signatures = {
        "rms_norm_rows": (None, [pointer, pointer, ctypes.c_float, size, size, pointer]),
        "rope_tables_like_llamacpp": (None, [ctypes.c_float, size, size, pointer, pointer]),
        "layers_work_size": (size, [pointer, size, ctypes.c_int]),
        "forward_layers": (None, [pointer, pointer, size, pointer, size, size, pointer, pointer, pointer, pointer,
                                  ctypes.c_int]),
    }
    for name, (restype, argtypes) in signatures.items():
        getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
    return lib


def _build(compiler: str, extra: tuple[str, ...] = ()) -> Path | None:
    """The cached library for this source and compiler (and `extra` flags), built if missing; None (with a
    warning) on failure."""
    from firstepoch.data.samples import home

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
