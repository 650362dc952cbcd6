"""A file as llama.cpp's own quantizer writes a Q4_K_M mixture of the bundled model (Q4_K and Q6_K where rows are a
multiple of 256 long, Q5_0 and Q8_0 elsewhere: what a downloaded Q4_K_M file of a small model holds) loads and
predicts the next tokens llama.cpp predicts on it. Its non-block types are held as bf16, so the logits are close,
not equal."""
import ctypes
from collections import Counter

import numpy as np
import pytest
import torch

import firstepoch.llm
from firstepoch.llm.gguf import read_gguf
from tests.llm.oracle import llama_cpp_model

pytestmark = pytest.mark.slow
TEXT = ("The Bell Rock Lighthouse, off the coast of Angus, Scotland, is the world's oldest surviving sea-washed "
        "lighthouse. It was built between 1807 and 1810 by Robert Stevenson on the Bell Rock in the North Sea.")


@pytest.fixture(scope="module")
def q4_k_m(smollm_path, tmp_path_factory):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python could not be installed")
    out = tmp_path_factory.mktemp("kquants") / "smollm2-q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, True, 2
    assert llama_cpp.llama_model_quantize(str(smollm_path).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


def test_a_q4_k_m_file_holds_the_mixture_and_loads(q4_k_m):
    types = Counter(t.tensor_type.name for t in read_gguf(q4_k_m).tensors.values())
    assert {"Q4_K", "Q6_K", "Q5_0"} <= set(types), types
    lm = firstepoch.llm.load(q4_k_m, context=128)
    assert lm.config["quantization"] and lm.generate("The capital of France is", max_new_tokens=4, temperature=0,
                                                     stream=False)


def test_its_next_token_choices_are_llama_cpps(q4_k_m):
    lm = firstepoch.llm.load(q4_k_m, context=128)
    ids = lm.encode(TEXT)
    llama = llama_cpp_model(q4_k_m, n_ctx=128, n_threads=2, logits_all=True)
    llama.eval(ids)
    theirs = np.array(llama.scores[:len(ids)])
    with torch.no_grad():
        ours = lm.model(torch.tensor([ids]))[0].numpy()
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    assert agree >= 0.9, agree  # every position of a real sentence, teacher-forced
    assert np.abs(ours - theirs).max() < 2.5 and np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.99
