"""Quantized weights: dequantization bit for bit against the gguf package, the kernel against exact math."""
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from firstepoch.llm.kernels import compiled_kernels  # noqa: E402
from firstepoch.llm.blocktypes import BLOCK_TYPES, dequantize_blocks  # noqa: E402
from firstepoch.llm.quant import QuantizedLinear  # noqa: E402

T = gguf.GGMLQuantizationType
AVX2 = "avx2" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return rng.standard_normal((48, 512)).astype(np.float32), 3 * rng.standard_normal((5, 512)).astype(np.float32)


def blocks_of(w: np.ndarray, qtype: str) -> np.ndarray:
    """w's rows in qtype blocks: by the gguf package where it can write the type, else llama.cpp's quantizer."""
    if qtype.endswith("_K") or qtype.startswith("IQ"):
        from tests.llm.oracle import ggml_quantize

        return ggml_quantize(w, qtype)
    return quantize(w, T[qtype])


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES))
def test_dequantization_equals_the_gguf_package_bit_for_bit(weights, qtype):
    raw = blocks_of(weights[0], qtype)
    ours = dequantize_blocks(torch.from_numpy(raw), qtype, 512).numpy()
    coarse = {"Q2_K": 1.5, "Q3_K": 0.8}.get(qtype, 0.5)  # two or three bits a weight: coarser steps
    assert np.array_equal(ours, dequantize(raw, T[qtype])) and np.abs(ours - weights[0]).max() < coarse


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES))
def test_the_kernel_is_llama_cpps_quantized_product_bit_for_bit(weights, qtype):
    """Against llama.cpp's own activation quantizer and vec_dot for the type (its libggml-cpu), row by row:
    equal where its AVX2 code runs, as on this machine; a zero block of activations included."""
    if compiled_kernels() is None:
        pytest.skip("no C compiler: the bf16 path is used instead")
    from tests.llm.oracle import ggml_matmul

    w, x = weights
    x[0, :256] = 0.0
    raw = blocks_of(w, qtype)
    layer = QuantizedLinear(blocks=torch.from_numpy(raw), qtype=qtype, in_features=512)
    ours, theirs = layer(torch.from_numpy(x)).numpy(), ggml_matmul(raw, x, qtype)
    if AVX2:
        np.testing.assert_array_equal(ours, theirs)
    else:  # the fallback C sums the same integers, scaled in another order
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    exact = x.astype(np.float64) @ dequantize(raw, T[qtype]).T.astype(np.float64)
    assert np.abs(ours - exact).max() < 0.02 * np.abs(exact).max()  # 8-bit activations: close, not equal


def test_without_the_kernel_weights_become_bf16(weights, monkeypatch):
    monkeypatch.setenv("FIRSTEPOCH_KERNELS", "0")
    compiled_kernels.cache_clear()
    try:
        raw = quantize(weights[0], T.Q4_1)
        reader_tensor = type("T", (), {"tensor_type": T.Q4_1, "shape": np.array([512, 48]), "data": raw,
                                       "release": lambda: None})
        layer = QuantizedLinear.from_gguf(reader_tensor)
        assert layer.qtype == "BF16" and layer.weight.dtype == torch.bfloat16
    finally:
        compiled_kernels.cache_clear()


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES))
def test_an_odd_number_of_rows_and_tiles_of_every_kind(weights, qtype):
    """47 weight rows (the last without a partner in the two-row tiles) times 9 activation rows (two tiles of four
    and one row alone): each product is still llama.cpp's."""
    if compiled_kernels() is None:
        pytest.skip("no C compiler: the bf16 path is used instead")
    from tests.llm.oracle import ggml_matmul

    w = weights[0][:47]
    x = np.random.default_rng(1).standard_normal((9, 512)).astype(np.float32)
    raw = blocks_of(w, qtype)
    ours = QuantizedLinear(blocks=torch.from_numpy(raw), qtype=qtype, in_features=512)(torch.from_numpy(x)).numpy()
    if AVX2:
        np.testing.assert_array_equal(ours, ggml_matmul(raw, x, qtype))
    else:
        np.testing.assert_allclose(ours, ggml_matmul(raw, x, qtype), rtol=1e-5, atol=1e-4)


def test_iq4_nl_with_an_odd_number_of_blocks():
    """IQ4_NL's blocks go in pairs into two sums, an odd last one alone (as llama.cpp's loop): 17 blocks a row."""
    if compiled_kernels() is None:
        pytest.skip("no C compiler: the bf16 path is used instead")
    from tests.llm.oracle import ggml_matmul, ggml_quantize

    rng = np.random.default_rng(3)
    w, x = rng.standard_normal((7, 544)).astype(np.float32), rng.standard_normal((9, 544)).astype(np.float32)
    raw = ggml_quantize(w, "IQ4_NL")
    ours = QuantizedLinear(blocks=torch.from_numpy(raw), qtype="IQ4_NL", in_features=544)(torch.from_numpy(x)).numpy()
    if AVX2:
        np.testing.assert_array_equal(ours, ggml_matmul(raw, x, "IQ4_NL"))
    else:
        np.testing.assert_allclose(ours, ggml_matmul(raw, x, "IQ4_NL"), rtol=1e-5, atol=1e-4)
