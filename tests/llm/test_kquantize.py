"""`quantize --to Q4_K_M` (and Q5_K_M, Q6_K): firstepoch's own K-quant writer against llama.cpp's quantizer, block
for block on a real matrix, and a whole file whose mixture is the one llama.cpp writes and which llama.cpp runs."""
import ctypes
from collections import Counter

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402

from firstepoch.llm.gguf import read_gguf, tensor_array  # noqa: E402
from firstepoch.llm.kquantize import quantize_k  # noqa: E402
from firstepoch.llm.blocktypes import BLOCK_TYPES  # noqa: E402
from firstepoch.llm.quant import quantize_gguf  # noqa: E402

K_TYPES = ["Q4_K", "Q5_K", "Q6_K"]


@pytest.fixture(scope="module")
def real_matrix(smollm_path):
    """A real FFN down-projection of the bundled model (rows of 1536: six super-blocks each), as fp32."""
    return tensor_array(read_gguf(smollm_path).tensors["blk.3.ffn_down.weight"]).astype(np.float32)


@pytest.mark.parametrize("qtype", K_TYPES)
@pytest.mark.parametrize("use_c, least_same", [(True, 0.99), (False, 0.9)])
def test_blocks_are_llama_cpps_and_as_close_to_the_weights(real_matrix, qtype, use_c, least_same):
    """The C search adds in llama.cpp's order (seen: every block equal); torch in its own, so a near-tie can
    round a scale the other way (seen: 95-100% of blocks equal), never further from the weights."""
    from tests.llm.oracle import ggml_quantize

    rng = np.random.default_rng(0)
    for w in (real_matrix, rng.standard_normal((32, 512)).astype(np.float32)):
        ours, theirs = quantize_k(w, qtype, use_c=use_c), ggml_quantize(w, qtype)
        assert ours.shape == theirs.shape and ours.dtype == np.uint8
        size = BLOCK_TYPES[qtype].block_bytes
        same = (ours.reshape(-1, size) == theirs.reshape(-1, size)).all(-1).mean()
        assert same >= least_same, same
        error, reference = (np.sqrt(((dequantize(q, gguf.GGMLQuantizationType[qtype]) - w) ** 2).mean())
                            for q in (ours, theirs))
        assert error <= 1.002 * reference, (error, reference)


@pytest.mark.parametrize("use_c", [True, False])
def test_a_zero_block_stays_zero(use_c):
    w = np.zeros((2, 512), np.float32)
    w[1, 256:] = np.linspace(-1, 1, 256)
    for qtype in K_TYPES:
        back = dequantize(quantize_k(w, qtype, use_c=use_c), gguf.GGMLQuantizationType[qtype])
        assert (back[0] == 0).all() and (back[1, :256] == 0).all() and np.abs(back[1, 256:] - w[1, 256:]).max() < 0.05


@pytest.fixture(scope="module")
def ours_q4_k_m(smollm_path, tmp_path_factory):
    return quantize_gguf(smollm_path, "q4_k_m", tmp_path_factory.mktemp("ours") / "smollm2-q4_k_m.gguf")


def test_the_q4_k_m_mixture_is_llama_cpps_and_llama_cpp_runs_it(smollm_path, ours_q4_k_m, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python could not be installed")
    from tests.llm.oracle import llama_cpp_model

    theirs = tmp_path / "theirs.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, True, 2
    assert llama_cpp.llama_model_quantize(str(smollm_path).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    ours_g, theirs_g = read_gguf(ours_q4_k_m), read_gguf(theirs)
    types = {name: t.tensor_type.name for name, t in ours_g.tensors.items()}
    assert types == {name: t.tensor_type.name for name, t in theirs_g.tensors.items()}
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= set(Counter(types.values()))
    assert ours_g.quantization == "Q4_K_M"
    assert abs(ours_q4_k_m.stat().st_size - theirs.stat().st_size) < 0.01 * theirs.stat().st_size
    # the same K-quant blocks as llama.cpp's, all but a few
    name = "blk.3.ffn_down.weight"
    a, b = (np.asarray(g.tensors[name].data).reshape(-1, 144) for g in (ours_g, theirs_g))
    assert (a == b).all(-1).mean() >= 0.95
    # llama.cpp reads it and continues a text as it does its own file
    text = "The capital of France is Paris. The capital of Germany is"
    outputs = []
    for path in (ours_q4_k_m, theirs):
        llm = llama_cpp_model(path, n_ctx=128, n_threads=2, logits_all=True)
        ids = llm.tokenize(text.encode())
        llm.eval(ids)
        outputs.append(np.asarray(llm.scores[len(ids) - 1]))
    assert outputs[0].argmax() == outputs[1].argmax()
    assert np.abs(outputs[0] - outputs[1]).max() < 1.0


def test_firstepoch_chats_with_its_own_q4_k_m(ours_q4_k_m):
    import firstepoch.llm
    from firstepoch.llm.quant import QuantizedLinear

    lm = firstepoch.llm.load(ours_q4_k_m, context=256)
    held = Counter(m.qtype for m in lm.model.modules() if isinstance(m, QuantizedLinear))
    assert {"Q4_K", "Q6_K"} <= set(held)
    answer = lm.chat([{"role": "user", "content": "Name the capital city of France."}], stream=False, temperature=0,
                     max_new_tokens=16)
    assert "Paris" in answer


def test_unknown_targets_are_refused_in_one_line(smollm_path, tmp_path):
    from firstepoch.errors import FirstEpochError

    with pytest.raises(FirstEpochError, match="choose one of q8, q4, Q8_0, Q4_1, Q4_K_M"):
        quantize_gguf(smollm_path, "Q3_K_XL", tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_a_fused_qkv_matrix_takes_llama_cpps_type_for_it():
    """Phi-3's fused q/k/v: Q5_K in a Q4_K_M file and Q6_K in a Q5_K_M one, as llama.cpp writes them."""
    from firstepoch.llm.quant import MIXTURES, _target_type

    fused = np.zeros((9216, 3072), np.float32)
    assert _target_type("blk.0.attn_qkv.weight", fused, MIXTURES["Q4_K_M"], 32, False) == "Q5_K"
    assert _target_type("blk.0.attn_qkv.weight", fused, MIXTURES["Q5_K_M"], 32, False) == "Q6_K"
    more_bits = [i for i in range(32) if _target_type(f"blk.{i}.ffn_down.weight", fused, MIXTURES["Q4_K_M"], 32,
                                                      False) == "Q6_K"]
    assert more_bits == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]  # first and last eighth, every third
