"""The bundled SmolLM2 (GGUF, Q4_1) run by firstepoch against llama.cpp on the same file, and wrong files."""
from pathlib import Path

import numpy as np
import pytest
import torch

import firstepoch.llm
from firstepoch import FirstEpochError
from firstepoch.llm.generate import sample_tokens
from firstepoch.llm.gguf import read_gguf

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, there was a little",
           "The three primary colors are", "Water boils at a temperature of", "import numpy as np\nx = np.",
           "My favourite recipe for pancakes", "The quick brown fox", "In 1492, Columbus", "Dear Sir or Madam,"]


def llama_greedy(llama, ids, n):
    """llama.cpp's n greedy tokens after ids, and its logits before each (prefill, then one token a step)."""
    llama.reset()
    llama.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
        llama.eval([out[-1]])
    return out, np.array(llama.scores[len(ids) - 1:len(ids) - 1 + n])


# layers.c follows the arithmetic of llama.cpp's AVX-512 kernels; on other CPUs llama.cpp itself sums differently
AVX512 = "avx512f" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")


def test_prefill_logits_equal_llama_cpp_on_any_cpu(smollm, llama):
    """Each prompt's next-token logits after the prefill: llama.cpp's to 1e-4 with AVX-512, to 1e-3 elsewhere."""
    for prompt in PROMPTS:
        ids = smollm.encode(prompt)
        llama.reset()
        llama.eval(ids)
        with torch.no_grad():
            ours = smollm.model(torch.tensor([ids]), last_only=True)[0, -1].numpy()
        np.testing.assert_allclose(ours, np.array(llama.scores[len(ids) - 1]), rtol=0, atol=1e-4 if AVX512 else 1e-3,
                                   err_msg=prompt)


@pytest.mark.slow
@pytest.mark.xfail(not AVX512, strict=False, reason="layers.c follows llama.cpp's AVX-512 arithmetic; on AVX2 "
                   "llama.cpp rounds differently (its own results change with its thread count), so a decode "
                   "drifts once a near-tie goes the other way (the next issue: match AVX2 too)")
def test_greedy_continuations_and_logits_equal_llama_cpp(smollm, llama):
    """The first 32 greedy tokens of each prompt are llama.cpp's, and so are the logits before each: the C
    layers reproduce its arithmetic (8-bit activations, fp16 KV cache, its orders of summation), so even
    near-ties (prompts here where the top two logits come within 0.02 of each other) go the same way."""
    closest = np.inf
    for prompt in PROMPTS:
        ids = smollm.encode(prompt)
        reference, ref_logits = llama_greedy(llama, ids, 32)
        assert list(sample_tokens(smollm.model, ids, 32, temperature=0)) == reference, prompt
        logits = []
        with torch.no_grad():  # the same steps, keeping the logits: a prefill, then one token at a time
            smollm.model.setup_cache(1, len(ids) + 32)
            logits.append(smollm.model(torch.tensor([ids]), last_only=True)[0, -1])
            for i, token in enumerate(reference[:-1]):
                logits.append(smollm.model(torch.tensor([[token]]), start=len(ids) + i)[0, -1])
            smollm.model.clear_cache()
        np.testing.assert_allclose(torch.stack(logits).numpy(), ref_logits, rtol=0, atol=1e-4, err_msg=prompt)
        top2 = np.sort(ref_logits, axis=-1)[:, -2:]
        closest = min(closest, float((top2[:, 1] - top2[:, 0]).min()))
    assert closest < 0.02  # the prompts include near-ties, where any arithmetic difference shows


@pytest.mark.slow
def test_a_whole_text_scored_at_once_equals_llama_cpp(smollm, llama):
    """Logits for every position of a text in one pass (as perplexity does) are llama.cpp's too."""
    ids = smollm.encode("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 3)
    llama.reset()
    llama.eval(ids)
    with torch.no_grad():
        ours = smollm.model(torch.tensor([ids]))[0].numpy()
    np.testing.assert_allclose(ours, np.array(llama.scores[:len(ids)]), rtol=0, atol=1e-4)


def test_prefill_with_cache_then_decode_equals_one_full_pass(smollm):
    ids = smollm.encode("Hello, my name is")
    with torch.no_grad():
        full = smollm.model(torch.tensor([ids]))[0]
        smollm.model.setup_cache(1, 32)
        first = smollm.model(torch.tensor([ids[:-1]]))[0]
        last = smollm.model(torch.tensor([ids[-1:]]), start=len(ids) - 1)[0]
        smollm.model.clear_cache()
    torch.testing.assert_close(torch.cat([first, last]), full, atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_chat_answer_equals_llama_cpp(smollm, llama):
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    llama.reset()
    reference = llama.create_chat_completion(messages, temperature=0, max_tokens=24)["choices"][0]["message"]["content"]
    ours = smollm.chat(messages, stream=False, temperature=0, max_new_tokens=24)
    assert ours == reference


def test_chat_stops_at_the_end_of_turn_and_reports_why(smollm):
    reply = smollm.chat([{"role": "user", "content": "Say hello."}], temperature=0, max_new_tokens=64)
    answer = "".join(reply)
    assert answer and "<|im_end|>" not in answer and reply.stats.finish_reason == "stop"
    story = smollm.generate("Once upon a time", temperature=0, max_new_tokens=3)
    "".join(story)
    assert (story.stats.finish_reason, story.stats.completion_tokens) == ("length", 3)
    assert reply.stats.finish_reason == "stop"  # each generation keeps its own figures


def test_a_prompt_longer_than_the_context_is_refused(smollm):
    with pytest.raises(FirstEpochError, match="context is 512"):
        smollm.generate("word " * 600, stream=False, max_new_tokens=1)


def test_stop_strings_end_the_text_before_them(smollm):
    generation = smollm.generate("1, 2, 3, 4, 5,", temperature=0, max_new_tokens=20, stop=[" 8"])
    text = "".join(generation)
    assert text.startswith(" 6, 7,") and " 8" not in text and generation.stats.finish_reason == "stop"


# ------------------------------------------------------------------------------------------ wrong files


@pytest.mark.parametrize("content, words", [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 98362432\n", "git-LFS pointer"),
    (b"lmgg" + b"\0" * 100, "legacy GGML"),
    (b"PK\x03\x04 a zip file", "not a GGUF file"),
    (b"GGUF\x07\0\0\0" + b"\0" * 40, "GGUF version 7"),
])
def test_wrong_files_are_named_for_what_they_are(tmp_path, content, words):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(FirstEpochError, match=words):
        firstepoch.llm.load(path)


def test_a_truncated_file_is_refused(tmp_path, smollm_path):
    path = tmp_path / "cut.gguf"
    with open(smollm_path, "rb") as f:
        path.write_bytes(f.read(20_000_000))
    with pytest.raises(FirstEpochError, match="truncated"):
        read_gguf(path)
    path.write_bytes(path.read_bytes()[:5000])  # cut inside the header
    with pytest.raises(FirstEpochError, match="truncated or corrupt"):
        read_gguf(path)


def test_a_model_that_cannot_fit_is_refused_with_the_numbers(smollm_path, monkeypatch):
    from firstepoch.llm import inference

    monkeypatch.setattr(inference, "available_memory", lambda: 50 * 2**20)
    with pytest.raises(FirstEpochError, match=r"needs about 0\.\d GiB but only 0\.0 GiB"):
        firstepoch.llm.load(smollm_path)


def test_models_lists_the_bundled_model(smollm_path):
    found = {m["name"]: m for m in firstepoch.llm.find_models()}
    entry = found["smollm2-135m-instruct"]
    assert entry["quantization"] == "Q4_1" and entry["architecture"] == "llama"
    assert 130e6 < entry["parameters"] < 140e6
