"""`--kv-cache q8_0`: the KV cache in Q8_0 blocks takes about half the memory of fp16 and costs about what llama.cpp's
own q8_0 cache costs in perplexity; the default fp16 cache gives llama.cpp's logits bit for bit (test_models)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from firstepoch.errors import FirstEpochError
from firstepoch.llm.batch import generate_batch

pytestmark = pytest.mark.slow
README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def q8(smollm):
    smollm.set_kv_cache("q8_0")
    yield smollm
    smollm.set_kv_cache("f16")


def logits_of(lm, ids):
    with torch.no_grad():
        lm.model.setup_cache(1, len(ids))
        try:
            return lm.model(torch.tensor([ids]))[0].numpy(), lm.model.layers[0].attn.cache.k.nbytes
        finally:
            lm.model.clear_cache()


def perplexity(logits, ids):
    logp = torch.log_softmax(torch.tensor(logits[:-1]), -1)
    return float(np.exp(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean().item()))


def test_q8_0_takes_about_half_the_memory_for_about_llama_cpps_cost(smollm, smollm_path, q8):
    ids = smollm.encode(README.read_text()[:3000])[:400]
    q8_logits, q8_bytes = logits_of(q8, ids)
    smollm.set_kv_cache("f16")
    f16_logits, f16_bytes = logits_of(smollm, ids)
    assert q8_bytes / f16_bytes == pytest.approx(34 / 64)  # 34 bytes a block of 32 against 64
    assert (q8_logits.argmax(-1) == f16_logits.argmax(-1)).mean() > 0.85  # seen: 0.925 (near-ties of README text)
    ours, f16 = perplexity(q8_logits, ids), perplexity(f16_logits, ids)
    assert abs(ours / f16 - 1) < 0.02, (ours, f16)  # seen: +0.4% on 1,000 tokens
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python could not be installed")
    from tests.llm.oracle import llama_cpp_model

    llama = llama_cpp_model(smollm_path, n_ctx=512, n_threads=2, logits_all=True, type_k=llama_cpp.GGML_TYPE_Q8_0,
                            type_v=llama_cpp.GGML_TYPE_Q8_0, flash_attn=True)
    llama.eval(ids)
    theirs = perplexity(np.array(llama.scores[:len(ids)]), ids)
    assert abs(ours / theirs - 1) < 0.02, (ours, theirs)


def test_q8_0_chats_and_batches_as_it_does_alone(q8):
    answer = q8.chat([{"role": "user", "content": "Name the capital city of France."}], stream=False, temperature=0,
                     max_new_tokens=16)
    assert "Paris" in answer
    prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]
    batched = [text for text, _ in generate_batch(q8, prompts, max_new_tokens=12, temperature=0)]
    q8.prompt_cache.clear()
    assert batched == [q8.generate(p, max_new_tokens=12, temperature=0, stream=False) for p in prompts]


def test_a_kv_cache_type_it_cannot_use_is_one_line(smollm):
    with pytest.raises(FirstEpochError, match="choose one of f16, q8_0"):
        smollm.set_kv_cache("q4_0")
    layers, smollm.model.c_layers = smollm.model.c_layers, None  # as on a GPU or without a C compiler
    try:
        with pytest.raises(FirstEpochError, match="C layers"):
            smollm.set_kv_cache("q8_0")
    finally:
        smollm.model.c_layers = layers
    assert smollm.model.kv_cache_type == "f16"
