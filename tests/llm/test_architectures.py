"""Each architecture of llm/architectures.py as a tiny random-weight GGUF in its tensor names and metadata
(tests/llm/gguf_files.tiny_model: random norms and biases, the Gemmas' layer 0 local with a window of 8
positions, gemma3's heads wider than dim / heads), which llama.cpp loads: the same token ids in, the same
logits out at 90 positions, and the same 32 greedy tokens after them. phi3's q/k/v and gate/up are fused
tensors, as its converter writes them."""
import numpy as np
import pytest
import torch

import firstepoch.llm
from firstepoch.llm.generate import sample_tokens
from tests.llm.gguf_files import WINDOW, tiny_model
from tests.llm.oracle import llama_cpp_model
from tests.llm.test_models import AVX512, llama_greedy

PROMPT = [1] + list(range(3, 3 + 89))  # BOS and byte tokens: 90 positions, far past the window
# bit for bit where llama.cpp runs its AVX-512 code, as the PyTorch path follows (models/like_llamacpp.py), but
# for gemma2's tanh: the C library's tanhf, one unit in the last place from the correctly rounded one we take
TOLERANCE = 1e-6 if AVX512 else 1e-3


@pytest.fixture(scope="module", params=["qwen2", "qwen3", "gemma2", "gemma3", "phi3"])
def tiny(request, tmp_path_factory):
    arch = request.param
    path = tiny_model(tmp_path_factory.mktemp(arch) / f"tiny-{arch}.gguf", seed=5, arch=arch)
    return arch, firstepoch.llm.load(path), llama_cpp_model(path, n_ctx=128, n_threads=1, logits_all=True)


def test_the_architecture_is_read_from_the_file(tiny):
    arch, lm, _ = tiny
    c = lm.model.config
    assert lm.config["architecture"] == arch and not c.is_llama and lm.model.c_layers is not None
    assert c.qkv_bias == (arch == "qwen2") and c.qk_norm == (arch in ("qwen3", "gemma3"))
    if arch.startswith("gemma"):
        assert c.post_norms and c.activation == "gelu_tanh" and c.embed_scale == pytest.approx(8.0)
        assert c.sliding_window == WINDOW and [c.is_local(i) for i in range(2)] == [True, False]
    assert (c.attn_softcap, c.final_softcap) == ((5.0, 3.0) if arch == "gemma2" else (None, None))
    if arch == "gemma3":
        assert c.head_dim == 32 and c.query_scale == pytest.approx(32 ** -0.5)
        assert (c.rope_theta, c.rope_theta_local) == (1e6, 10000.0)
    if arch == "phi3":  # its fused q/k/v and gate/up tensors split into the Transformer's matrices
        assert c.query_scale == pytest.approx(16 ** -0.5)
        assert lm.model.layers[0].attn.v_proj.out_features == 32 and lm.model.layers[0].mlp.up_proj.out_features == 128


def test_logits_equal_llama_cpps_in_c_and_in_pytorch(tiny):
    """The C layers (layers.c) and the PyTorch path (models/like_llamacpp.py, used for batches) alike."""
    arch, lm, llama = tiny
    llama.reset()
    llama.eval(PROMPT)
    theirs = np.array(llama.scores[:len(PROMPT)])
    model, c_layers = lm.model, lm.model.c_layers
    with torch.no_grad():
        ours = model(torch.tensor([PROMPT]))[0].numpy()
        model.c_layers = None
        try:
            pytorch = model(torch.tensor([PROMPT]))[0].numpy()
        finally:
            model.c_layers = c_layers
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE, err_msg=arch)
    np.testing.assert_allclose(pytorch, theirs, rtol=0, atol=TOLERANCE, err_msg=arch)


def test_greedy_tokens_and_each_steps_logits_equal_llama_cpps(tiny):
    """A prefill, then one token a step through the KV cache (the windowed layer drops positions as it goes)."""
    arch, lm, llama = tiny
    reference, their_logits = llama_greedy(llama, PROMPT, 32)
    assert list(sample_tokens(lm.model, PROMPT, 32, temperature=0)) == reference, arch
    model, logits = lm.model, []
    with torch.no_grad():
        model.setup_cache(1, len(PROMPT) + 32)
        logits.append(model(torch.tensor([PROMPT]), last_only=True)[0, -1])
        for i, token in enumerate(reference[:-1]):
            logits.append(model(torch.tensor([[token]]), start=len(PROMPT) + i)[0, -1])
        model.clear_cache()
    np.testing.assert_allclose(torch.stack(logits).numpy(), their_logits, rtol=0, atol=TOLERANCE, err_msg=arch)


def test_each_variation_changes_the_logits(tiny):
    """The comparison above sees each thing an architecture adds: turned off (in the PyTorch path), the logits
    move."""
    arch, lm, _ = tiny
    model, ids, c_layers = lm.model, torch.tensor([PROMPT]), lm.model.c_layers
    model.c_layers = None
    try:
        with torch.no_grad():
            reference = model(ids)
            for layer in model.layers:
                layer.attn.window = None
            assert (model(ids) - reference).abs().max() > 1e-2 or not arch.startswith("gemma"), "the window"
            for layer in model.layers:
                layer.attn.window = WINDOW if layer.local else None
            # each vector an architecture adds (biases, head norms, post-norms), set to its neutral value
            attn, block = model.layers[0].attn, model.layers[0]
            vectors = {"qwen2": lambda: [attn.k_bias], "qwen3": lambda: [attn.q_norm.weight, attn.k_norm.weight],
                       "gemma2": lambda: [block.attn_post_norm.weight, block.mlp_post_norm.weight],
                       "gemma3": lambda: [attn.q_norm.weight, block.mlp_post_norm.weight], "phi3": list}[arch]()
            for vector in vectors:
                saved = vector.clone()
                vector.fill_(0.0 if arch == "qwen2" else 1.0)
                assert (model(ids) - reference).abs().max() > 1e-2, arch
                vector.copy_(saved)
            if arch.startswith("gemma"):  # the embeddings' scaling
                model.config.embed_scale, scale = 1.0, model.config.embed_scale
                assert (model(ids) - reference).abs().max() > 1e-2, "the embedding scale"
                model.config.embed_scale = scale
            assert torch.equal(model(ids), reference)
    finally:
        model.c_layers = c_layers
