"""firstepoch's own CPU kernels (block-quantized matmuls, the decode step of a layer), compiled on first use with the machine's C compiler and loaded with ctypes.

`ggml_matmul()` gives the compiled library, or None (with one warning) where no compiler is found or the
build fails; callers then fall back to PyTorch's bf16 matmul. The library is cached in firstepoch's data
folder under a name made from the source's hash and the compiler flags, so it is built once a machine.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

SOURCES = [Path(__file__).with_name(name) for name in ("ggml_matmul.c", "decode.c")]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
FUNCTIONS = ("matmul_q4_0", "matmul_q4_1", "matmul_q8_0")


@cache
def ggml_matmul() -> ctypes.CDLL | None:
    if os.environ.get("FIRSTEPOCH_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("no C compiler found: quantized LLM weights are expanded to bf16 (slower, more memory); "
                      "install gcc for firstepoch's quantized kernels", stacklevel=2)
        return None
    from firstepoch.data.samples import home

    source = b"".join(path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    library = home() / "kernels" / f"firstepoch-kernels-{key}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
        os.close(fd)
        result = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", partial, "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(partial)
            first = (result.stderr.strip().splitlines() or ["?"])[0]
            warnings.warn(f"building firstepoch's quantized kernels failed ({first}); using bf16 weights", stacklevel=2)
            return None
        os.replace(partial, library)  # another process sees no library or a whole one
    lib = ctypes.CDLL(str(library))
    for name in FUNCTIONS:
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.decode_layer.restype = None
    lib.decode_layer.argtypes = [pointer, pointer, pointer, ctypes.c_float, pointer, pointer, pointer, pointer, pointer,
                                 size, size, size, size, size, pointer, pointer, size, size, pointer, pointer, pointer,
                                 pointer, ctypes.c_int]
    lib.decode_layers.restype = None
    lib.decode_layers.argtypes = [pointer, pointer, size, ctypes.c_float, size, size, size, size, size, size, size,
                                  pointer, pointer, pointer, pointer, ctypes.c_int]
    return lib
