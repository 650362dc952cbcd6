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


# one layer of a Q4_K_M-like mixture: q, k and v of three types (so no stacked product), and the K-quants where
# rows are 256 long (the down projections); under AddressSanitizer too (tests/llm/test_asan.py runs this file)
MIXED = {"attn.q_proj": "Q8_0", "attn.k_proj": "Q4_0", "attn.v_proj": "Q5_1", "attn.o_proj": "Q5_0",
         "mlp.gate_proj": "Q4_1", "mlp.up_proj": "Q8_0"}
K_QUANTS = ["Q4_K", "Q5_K", "Q6_K"]  # layer i's down projection
SCALES = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # where each K-quant block keeps its fp16 scales


def k_quant_blocks(rows: int, in_features: int, qtype: str, rng) -> np.ndarray:
    """Random K-quant blocks (any bits are a valid block) with small, finite fp16 scales."""
    from firstepoch.llm.blocktypes import BLOCK_TYPES

    kind = BLOCK_TYPES[qtype]
    raw = rng.integers(0, 256, (rows, in_features // kind.weights, kind.block_bytes), dtype=np.uint8)
    for at in SCALES[qtype]:
        raw[..., at:at + 2] = np.full(raw.shape[:2], 0.002, np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


def test_mixed_types_and_k_quants_run_in_c_as_in_pytorch():
    if compiled_kernels() is None:
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    reference, rng = Transformer(CONFIG), np.random.default_rng(0)
    weights = {name: p.detach() for name, p in reference.named_parameters()}

    def matrix(name):
        if name.endswith("mlp.down_proj"):
            qtype = K_QUANTS[int(name.split(".")[1])]
            raw = k_quant_blocks(CONFIG.dim, CONFIG.hidden_dim, qtype, rng)
            return QuantizedLinear(blocks=torch.from_numpy(raw), qtype=qtype, in_features=CONFIG.hidden_dim)
        qtype = MIXED.get(name.split(".", 2)[-1], "Q8_0")
        w = weights[f"{name}.weight" if name != "lm_head" else "embed_tokens.weight"].numpy() * 10
        raw = quantize(w.astype(np.float32), gguf.GGMLQuantizationType[qtype])
        return QuantizedLinear(blocks=torch.from_numpy(raw), qtype=qtype, in_features=w.shape[1])

    model = build_inference_model(CONFIG, matrix, lambda name: weights[f"{name}.weight"])
    assert model.c_layers is not None and all(layer.qkv is None for layer in model.c_layers.layers)
    prompt, tokens = [5, 17, 33, 2, 60, 71, 8], [40, 41, 90, 3, 12, 55, 7, 19, 26, 81]
    fast, slow = decode(model, prompt, tokens, True), decode(model, prompt, tokens, False)
    assert torch.isfinite(fast).all() and (fast - slow).abs().max() < 0.05 * slow.abs().max()


def test_rows_of_several_sequences_give_each_the_logits_it_gets_alone():
    """forward_rows (continuous batching): three sequences' prefills in one pass, then their decode steps together,
    each in its own cache slot, equal bit for bit what each sequence gets alone (under AddressSanitizer too)."""
    if compiled_kernels() is None:
        pytest.skip("no C compiler")
    model = quantized_model("Q4_1")
    prompts, steps = [[5, 17, 33, 2, 60], [71, 8, 40, 41, 90, 3, 12], [55]], [[7, 19], [26, 81], [9, 11]]
    alone = [decode(model, p, s, True) for p, s in zip(prompts, steps)]
    model.setup_cache(3, 32)
    try:
        with torch.no_grad():
            rows = [(t, pos, i, len(p) == 1) for i, p in enumerate(prompts) for pos, t in enumerate(p)]
            ends = list(np.cumsum([len(p) for p in prompts]) - 1)
            together = [list(model.forward_rows(*map(list, zip(*rows)), ends))]
            for k in range(2):
                together.append(list(model.forward_rows([s[k] for s in steps], [len(p) + k for p in prompts],
                                                        [0, 1, 2], [True] * 3, [0, 1, 2])))
            with pytest.raises(ValueError, match="outside the bound KV cache"):
                model.forward_rows([1], [0], [3], [True], [0])  # a fourth slot: there are three
    finally:
        model.clear_cache()
    for i in range(3):
        assert torch.equal(torch.stack([step[i] for step in together]), alone[i])
