"""The C layers (prefill and decode, all layers in one call) against the PyTorch Transformer they accelerate."""
import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf.quants import quantize  # noqa: E402

from firstepoch.llm.kernels import compiled_kernels  # noqa: E402
from firstepoch.llm.inference import build_inference_model  # noqa: E402
from firstepoch.llm.quant import QuantizedLinear  # noqa: E402
from firstepoch.models.transformer import Transformer, TransformerConfig  # noqa: E402

# llama.cpp's attention arithmetic, as GGUF models have: the C layers compute only that
CONFIG = TransformerConfig(vocab_size=96, dim=128, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=256, context=64,
                           attention="llamacpp_fp16")


def quantized_model(qtype: str):
    """A random Transformer with its matrices quantized to `qtype` blocks."""
    torch.manual_seed(0)
    reference = Transformer(CONFIG)
    weights = {name: p.detach() for name, p in reference.named_parameters()}

    def matrix(name):
        w = weights[f"{name}.weight" if name != "lm_head" else "embed_tokens.weight"].numpy() * 10
        raw = quantize(w.astype(np.float32), gguf.GGMLQuantizationType[qtype])
        return QuantizedLinear(blocks=torch.from_numpy(raw), qtype=qtype, in_features=w.shape[1])

    return build_inference_model(CONFIG, matrix, lambda name: weights[f"{name}.weight"])


def decode(model, prompt, tokens, fast):
    saved = model.c_layers
    model.c_layers = saved if fast else None  # None: the PyTorch layers
    model.setup_cache(1, 32)
    try:
        with torch.no_grad():
            out = [model(torch.tensor([prompt]))[0, -1]]
            for i, token in enumerate(tokens):
                out.append(model(torch.tensor([[token]]), start=len(prompt) + i)[0, -1])
    finally:
        model.clear_cache()
        model.c_layers = saved
    return torch.stack(out)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q4_0"])
def test_the_c_layers_equal_the_pytorch_layers(qtype):
    if compiled_kernels() is None:
        pytest.skip("no C compiler")
    model = quantized_model(qtype)
    assert model.c_layers is not None, "the C layers should be enabled for block weights"
    prompt, tokens = [5, 17, 33, 2, 60, 71, 8], [40, 41, 90, 3, 12, 55, 7, 19, 26, 81]
    fast, slow = decode(model, prompt, tokens, True), decode(model, prompt, tokens, False)
    # same kernels, same 8-bit activations and fp16 attention rounding; RMSNorm, RoPE, softmax and SiLU round
    # differently in PyTorch, which may move an activation across an 8-bit rounding boundary now and then (a few
    # % of one logit at most)
    assert (fast - slow).abs().max() < 0.05 * slow.abs().max()
    assert torch.equal(fast.argmax(-1), slow.argmax(-1))
