"""llama.cpp (llama-cpp-python), the oracle of the GGUF tests, on its plain CPU path.

Without `use_extra_bufts`, llama.cpp multiplies every weight with its vec_dot kernels, whose arithmetic ours
follows. With them it repacks weights for other kernels: AMX on Intel Xeons (which segfaults in this version on
the first decode) and AVX2/AVX-512 interleaved blocks (which sum in another order, and change their results
with the thread count)."""
from __future__ import annotations

from unittest import mock

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
