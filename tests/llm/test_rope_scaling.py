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
