"""Quantized weights: dequantization bit for bit against the gguf package, the kernel against exact math."""
import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from firstepoch.llm.kernels import compiled_kernels  # noqa: E402
from firstepoch.llm.blocktypes import BLOCK_TYPES, dequantize_blocks  # noqa: E402
from firstepoch.llm.quant import QuantizedLinear  # noqa: E402

T = gguf.GGMLQuantizationType


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return rng.standard_normal((48, 256)).astype(np.float32), rng.standard_normal((5, 256)).astype(np.float32)


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES))
def test_dequantization_equals_the_gguf_package_bit_for_bit(weights, qtype):
    raw = quantize(weights[0], T[qtype])
    assert np.array_equal(dequantize_blocks(torch.from_numpy(raw), qtype, 256).numpy(), dequantize(raw, T[qtype]))


@pytest.mark.parametrize("qtype", list(BLOCK_TYPES))
def test_the_kernel_computes_the_product_with_8_bit_activations(weights, qtype):
    if compiled_kernels() is None:
        pytest.skip("no C compiler: the bf16 path is used instead")
    w, x = weights
    raw = quantize(w, T[qtype])
    layer = QuantizedLinear(blocks=torch.from_numpy(raw), qtype=qtype, in_features=256)
    y = layer(torch.from_numpy(x)).numpy()
    x8 = dequantize(quantize(x, T.Q8_0), T.Q8_0)  # the activations as the kernel quantizes them
    exact = x8.astype(np.float64) @ dequantize(raw, T[qtype]).T.astype(np.float64)
    # Q4_1 also uses d * sum(q) of each activation block rounded to fp16, as llama.cpp does
    tolerance = 0.05 if qtype == "Q4_1" else 1e-4
    assert np.abs(y - exact).max() < tolerance
    assert np.abs(y - x @ dequantize(raw, T[qtype]).T).max() < 0.02 * np.abs(y).max()  # and near fp32


def test_without_the_kernel_weights_become_bf16(weights, monkeypatch):
    monkeypatch.setenv("FIRSTEPOCH_KERNELS", "0")
    compiled_kernels.cache_clear()
    try:
        raw = quantize(weights[0], T.Q4_1)
        reader_tensor = type("T", (), {"tensor_type": T.Q4_1, "shape": np.array([256, 48]), "data": raw,
                                       "release": lambda: None})
        layer = QuantizedLinear.from_gguf(reader_tensor)
        assert layer.qtype == "BF16" and layer.weight.dtype == torch.bfloat16
    finally:
        compiled_kernels.cache_clear()
