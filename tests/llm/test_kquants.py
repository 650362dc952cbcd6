"""A file as llama.cpp's own quantizer writes a Q4_K_M mixture of the bundled model (Q4_K and Q6_K where rows are a
multiple of 256 long, Q5_0 and Q8_0 elsewhere: what a downloaded Q4_K_M file of a small model holds, q/k/v of
different types in one layer) runs in its blocks through the C layers and gives llama.cpp's logits and greedy
tokens: the K-quant kernels follow its vec_dot arithmetic (its tiled prefill kernel is off in the oracle, see
tests/llm/oracle.py)."""
import ctypes
from collections import Counter

import numpy as np
import pytest
import torch

import firstepoch.llm
from firstepoch.llm.generate import sample_tokens
from firstepoch.llm.gguf import read_gguf
from firstepoch.llm.quant import QuantizedLinear
from tests.llm.oracle import llama_cpp_model
from tests.llm.test_models import AVX512, llama_greedy

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


@pytest.fixture(scope="module")
def q4_k_m_model(q4_k_m):
    return firstepoch.llm.load(q4_k_m, context=128)


def test_a_q4_k_m_file_holds_the_mixture_and_runs_in_its_blocks(q4_k_m, q4_k_m_model):
    types = Counter(t.tensor_type.name for t in read_gguf(q4_k_m).tensors.values())
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= set(types), types
    lm = q4_k_m_model
    assert lm.config["quantization"] == "Q4_K_M" and lm.model.c_layers is not None
    held = Counter(m.qtype for m in lm.model.modules() if isinstance(m, QuantizedLinear))
    assert set(held) == {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}, held  # nothing expanded to bf16


def test_its_logits_and_greedy_tokens_are_llama_cpps(q4_k_m, q4_k_m_model):
    lm = q4_k_m_model
    ids = lm.encode(TEXT)
    llama = llama_cpp_model(q4_k_m, n_ctx=128, n_threads=1, logits_all=True)
    llama.eval(ids)
    theirs = np.array(llama.scores[:len(ids)])
    with torch.no_grad():
        ours = lm.model(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 if AVX512 else 1e-2)
    prompt = ids[:12]
    reference, _ = llama_greedy(llama, prompt, 32)
    greedy = list(sample_tokens(lm.model, prompt, 32, temperature=0))
    if AVX512:
        assert greedy == reference
    else:  # other rounding (logits within 1e-2): a near tie may go the other way some tokens in
        assert greedy[:10] == reference[:10]


@pytest.fixture(scope="module")
def with_q3_k(smollm_path, tmp_path_factory):
    """The bundled model with its FFN down-projections (rows of 1536) in Q3_K and Q2_K (even and odd layers), by
    llama.cpp's quantizer, the rest as it is: the 3- and 2-bit tensors of Q3_K_M and Q2_K files (their other types,
    IQ4_NL where rows are 576 long, firstepoch holds as bf16)."""
    gguf = pytest.importorskip("gguf")
    from firstepoch.llm.gguf import tensor_array
    from firstepoch.llm.quant import _copy_metadata
    from tests.llm.oracle import ggml_quantize

    g = read_gguf(smollm_path)
    out = tmp_path_factory.mktemp("q3_k") / "smollm2-q3_k.gguf"
    writer = gguf.GGUFWriter(str(out), arch=g.architecture)
    _copy_metadata(g, writer, gguf)
    for name, t in g.tensors.items():
        if name.endswith("ffn_down.weight"):
            qtype = "Q3_K" if int(name.split(".")[1]) % 2 == 0 else "Q2_K"
            writer.add_tensor(name, ggml_quantize(tensor_array(t).astype(np.float32), qtype),
                              raw_dtype=gguf.GGMLQuantizationType[qtype])
        else:
            writer.add_tensor(name, np.asarray(t.data), raw_shape=np.asarray(t.data).shape if len(t.shape) < 2 else
                              None, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_q3_k_and_q2_k_tensors_run_in_their_blocks_with_llama_cpps_logits(with_q3_k):
    lm = firstepoch.llm.load(with_q3_k, context=128)
    held = Counter(m.qtype for m in lm.model.modules() if isinstance(m, QuantizedLinear))
    assert held["Q3_K"] == held["Q2_K"] == lm.model.config.n_layers // 2 and lm.model.c_layers is not None
    ids = lm.encode(TEXT)
    llama = llama_cpp_model(with_q3_k, n_ctx=128, n_threads=1, logits_all=True)
    llama.eval(ids)
    with torch.no_grad():
        ours = lm.model(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(ours, np.array(llama.scores[:len(ids)]), rtol=0, atol=1e-4 if AVX512 else 1e-2)

