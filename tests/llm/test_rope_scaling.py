"""Llama 3.1's long-context RoPE: a GGUF's rope_freqs tensor divides each rotary frequency, as llama.cpp applies
it. A tiny random model with factors of the llama3 formula's shape (1 for high frequencies, up to 8 for low
ones) gives llama.cpp's logits; read without its factors it would not."""
import numpy as np
import pytest
import torch

import firstepoch.llm
from firstepoch import FirstEpochError
from tests.llm.gguf_files import DIM, HEADS, tiny_model
from tests.llm.oracle import llama_cpp_model

HALF = DIM // HEADS // 2
FACTORS = np.concatenate([np.ones(HALF // 2), np.linspace(1.5, 8.0, HALF - HALF // 2)]).astype(np.float32)
PROMPT = list(range(3, 3 + 100))  # byte tokens: 100 positions, far enough for low frequencies to turn


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("rope") / "llama31-tiny.gguf", seed=3, rope_freqs=FACTORS)


def logits_of(lm, ids):
    with torch.no_grad():
        return lm.model(torch.tensor([ids]))[0].numpy()


def test_the_factors_are_read_and_change_the_model(scaled, tmp_path):
    lm = firstepoch.llm.load(scaled)
    assert lm.model.config.rope_freq_factors == pytest.approx(FACTORS.tolist())
    plain = firstepoch.llm.load(tiny_model(tmp_path / "plain.gguf", seed=3))
    assert np.abs(logits_of(lm, PROMPT) - logits_of(plain, PROMPT)).max() > 0.05  # the factors matter here


def test_logits_equal_llama_cpps_on_a_model_with_rope_freqs(scaled):
    llama = llama_cpp_model(scaled, n_ctx=128, n_threads=1, logits_all=True)
    llama.eval(PROMPT)
    theirs = np.array(llama.scores[:len(PROMPT)])
    ours = logits_of(firstepoch.llm.load(scaled), PROMPT)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)


def test_factors_of_the_wrong_shape_are_refused(tmp_path):
    path = tiny_model(tmp_path / "bad.gguf", rope_freqs=np.ones(HALF + 1, np.float32))
    with pytest.raises(FirstEpochError, match=r"rope_freqs.weight has shape \[9\], not \[8\]"):
        firstepoch.llm.load(path)


# LongRoPE as Phi-3's 128k files hold it: factors for contexts within the original one, others past it, and a
# factor on cos and sin; the tiny phi3 model's original context is 64 of its 128 (head size 16: 8 frequencies)
SHORT = np.linspace(1.0, 2.0, 8).astype(np.float32)
LONG = np.linspace(1.0, 12.0, 8).astype(np.float32)


@pytest.fixture(scope="module")
def long_rope(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("longrope") / "phi3-long.gguf", seed=4, arch="phi3",
                      long_rope=(SHORT, LONG, 64, 1.19))


def test_long_rope_takes_the_short_factors_within_the_original_context(long_rope):
    config = firstepoch.llm.load(long_rope, context=64).model.config
    assert config.rope_freq_factors == pytest.approx(SHORT.tolist()) and config.rope_attn_factor == pytest.approx(1.19)


def test_long_rope_past_the_original_context_gives_llama_cpps_logits(long_rope):
    """Past it, the long factors and the attention factor, as llama.cpp applies them (it takes the short ones
    only for a context within the original, which its minimum of 256 positions is not here)."""
    lm = firstepoch.llm.load(long_rope, context=128)
    assert lm.model.config.rope_freq_factors == pytest.approx(LONG.tolist())
    ids = PROMPT[:120]
    llama = llama_cpp_model(long_rope, n_ctx=128, n_threads=1, logits_all=True)
    llama.eval(ids)
    np.testing.assert_allclose(logits_of(lm, ids), np.array(llama.scores[:len(ids)]), rtol=0, atol=1e-4)
