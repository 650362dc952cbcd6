"""GGUF export, read back with the gguf package and run by llama.cpp (llama-cpp-python)."""
import numpy as np
import pytest
import torch

import firstepoch
from firstepoch import DataLoaders, Learner
from firstepoch.data import samples
from firstepoch.llm.generate import sample_tokens
from tests.llm.oracle import llama_cpp_model

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")

STRINGS = ["ROMEO:\nWhat light through yonder window breaks?", "  runs   of spaces\tand\ttabs\n\n",
           "accents: café, naïve, Œdipus", "emoji 🙂 and 日本語", "code: def f(x):\n    return x ** 2  # ok"]


def train_and_export(tmp_path, tokenizer, steps=80):
    text = samples.shakespeare(tmp_path / "s.txt").read_text()[:40_000]
    (tmp_path / "c.txt").write_text(text)
    dls = DataLoaders.from_text(tmp_path / "c.txt", context=64, batch_size=16, steps_per_epoch=steps,
                                tokenizer=tokenizer, vocab_size=320, cache_dir=tmp_path)
    learn = Learner(dls, "transformer", progress=False)
    learn.fit_one_cycle(1, 3e-3)
    lm = firstepoch.load(learn.export(tmp_path / "bundle"), device="cpu")
    from firstepoch.llm.gguf import export_gguf

    return lm, export_gguf(lm, tmp_path / "model.gguf")


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    return train_and_export(tmp_path_factory.mktemp("char"), "char")


def test_the_file_reads_back_with_the_gguf_package(char_model):
    lm, path = char_model
    reader = gguf.GGUFReader(path)
    fields = {name: f for name, f in reader.fields.items()}
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    assert arch == "llama"
    assert int(fields["llama.block_count"].parts[-1][0]) == lm.model.config.n_layers
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    embd = np.asarray(tensors["token_embd.weight"].data)
    assert np.array_equal(embd, lm.model.embed_tokens.weight.detach().numpy())
    q = torch.from_numpy(np.asarray(tensors["blk.0.attn_q.weight"].data).copy())
    ours = lm.model.layers[0].attn.q_proj.weight.detach()
    assert not torch.equal(q, ours) and torch.equal(q.sort(0).values, ours.sort(0).values)  # rows permuted


def llama(path, **kwargs):
    """llama.cpp on `path`; the calling test is skipped where llama-cpp-python is not installed (the export,
    read-back and quantize checks of our own still run there)."""
    return llama_cpp_model(path, **{"n_ctx": 64, "n_threads": 1, **kwargs})


def test_llama_cpp_tokenizes_like_firstepoch(char_model):
    lm, path = char_model
    llm = llama(path, vocab_only=True)
    for text in STRINGS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == lm.tokenizer.encode(text), text


def test_llama_cpp_greedy_continuation_equals_firstepoch(char_model):
    lm, path = char_model
    llm = llama(path)
    for prompt in ["ROMEO:\n", "JULIET:\nO ", "KING HENRY V:\nOnce more", "First Citizen:\n", "HAMLET:\nTo be"]:
        ids = lm.tokenizer.encode(prompt)
        ours = list(sample_tokens(lm.model, ids, 32, temperature=0))
        llm.reset()
        theirs = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            theirs.append(token)
            if len(theirs) == 32:
                break
        assert theirs == ours, prompt


def test_last_position_logits_are_close(char_model):
    lm, path = char_model
    llm = llama(path, logits_all=True)
    ids = lm.tokenizer.encode(STRINGS[0])
    llm.eval(ids)
    theirs = np.asarray(llm.scores[len(ids) - 1])
    with torch.no_grad():
        ours = lm.model(torch.tensor([ids]))[0, -1].numpy()
    assert np.allclose(theirs, ours, atol=1e-3)


def test_bpe_models_tokenize_like_firstepoch_in_llama_cpp(tmp_path):
    lm, path = train_and_export(tmp_path, "bpe", steps=20)
    llm = llama(path, vocab_only=True)
    for text in STRINGS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == lm.tokenizer.encode(text), text


def test_the_exported_file_loads_back_as_an_llm_with_the_same_tokens_and_logits(char_model):
    """Reading is the inverse of export: SentencePiece-style vocabulary, un-permuted q/k, F32 weights."""
    import firstepoch.llm

    lm, path = char_model
    back = firstepoch.llm.load(path)
    for text in STRINGS:
        assert back.tokenizer.encode(text) == lm.tokenizer.encode(text), text
        assert back.tokenizer.decode(lm.tokenizer.encode(text)) == text
    ids = lm.tokenizer.encode(STRINGS[0])
    with torch.no_grad():
        torch.testing.assert_close(back.model(torch.tensor([ids])), lm.model(torch.tensor([ids])), atol=0.05, rtol=0.01)


QUANTS = [("q8", "Q8_0"), ("q4", "Q4_1")]


@pytest.fixture(scope="module")
def quantized(char_model, tmp_path_factory):
    """The char model re-quantized to each of QUANTS, by target name (needs only the gguf package)."""
    from firstepoch.llm.quant import quantize_gguf

    folder = tmp_path_factory.mktemp("quantized")
    return {target: quantize_gguf(char_model[1], target, folder / f"{target}.gguf") for target, _ in QUANTS}


@pytest.mark.parametrize("target, qtype", QUANTS)
def test_quantize_writes_a_smaller_file_that_reads_back(char_model, quantized, target, qtype):
    import firstepoch.llm
    from firstepoch.llm.gguf import read_gguf

    lm, path = char_model
    out = quantized[target]
    g = read_gguf(out)
    assert g.tensors["blk.0.ffn_up.weight"].tensor_type.name == qtype
    assert g.tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert out.stat().st_size < path.stat().st_size / 2.5
    assert g.metadata["tokenizer.ggml.tokens"] == read_gguf(path).metadata["tokenizer.ggml.tokens"]
    ids = lm.tokenizer.encode(STRINGS[0])
    with torch.no_grad():  # ours reads it back: close to the unquantized model, not just finite
        logits = firstepoch.llm.load(out).model(torch.tensor([ids]))
        reference = lm.model(torch.tensor([ids]))
    assert torch.isfinite(logits).all()
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree  # seen: 1.0 for both


@pytest.mark.parametrize("target", [target for target, _ in QUANTS])
def test_llama_cpp_runs_the_quantized_file_as_firstepoch_does(char_model, quantized, target):
    import firstepoch.llm

    lm, _ = char_model
    ids = lm.tokenizer.encode(STRINGS[0])
    llm = llama(quantized[target], logits_all=True)  # else llama.cpp keeps no scores for the positions
    llm.eval(ids)
    theirs = np.asarray(llm.scores[len(ids) - 1])
    with torch.no_grad():
        ours = firstepoch.llm.load(quantized[target]).model(torch.tensor([ids]))[0, -1].numpy()
    assert np.isfinite(theirs).all() and theirs.argmax() == ours.argmax()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-3)  # seen: equal
