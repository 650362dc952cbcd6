"""The bundled SmolLM2 (GGUF, Q4_1) run by firstepoch against llama.cpp on the same file, and wrong files."""
import numpy as np
import pytest
import torch

import firstepoch.llm
from firstepoch import FirstEpochError
from firstepoch.llm.gguf import read_gguf

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, there was a little",
           "The three primary colors are", "Water boils at a temperature of", "import numpy as np\nx = np."]
MARGIN = 1.0


def llama_greedy(llama, ids, n):
    llama.reset()
    llama.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
        llama.eval([out[-1]])
    return out, np.array(llama.scores[len(ids) - 1:len(ids) + n])


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.slow
def test_next_token_distributions_agree_with_llama_cpp(smollm, llama):
    """Along llama.cpp's own 32-token greedy continuation of each prompt (teacher forcing, so one near-tie
    does not derail the rest): the next-token distributions are close (KL divergence; llama.cpp's own
    8-bit activations and fp16 KV cache make it differ from exact arithmetic by a similar amount), and
    the top tokens agree where llama.cpp's choice leads its runner-up by a clear margin."""
    decided = agreed = 0
    for prompt in PROMPTS:
        ids = smollm.encode(prompt)
        reference, ref_logits = llama_greedy(llama, ids, 32)
        with torch.no_grad():
            ours = smollm.model(torch.tensor([ids + reference]))[0, len(ids) - 1:].numpy()
        p, q = log_softmax(ref_logits), log_softmax(ours)
        kl = (np.exp(p) * (p - q)).sum(-1)
        assert kl.mean() < 0.01 and kl.max() < 0.1, (prompt, kl.mean(), kl.max())
        top2 = np.sort(ref_logits, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0] > MARGIN)[:32]
        decided += int(clear.sum())
        agreed += int((ours[:32].argmax(-1) == np.array(reference))[clear].sum())
    assert decided > 100 and agreed >= 0.9 * decided, f"{agreed} of {decided} clear choices agree"


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
    answer = smollm.chat([{"role": "user", "content": "Say hello."}], stream=False, temperature=0, max_new_tokens=64)
    assert answer and "<|im_end|>" not in answer and smollm.stats["finish_reason"] == "stop"
    smollm.generate("Once upon a time", stream=False, temperature=0, max_new_tokens=3)
    assert smollm.stats == {**smollm.stats, "finish_reason": "length", "completion_tokens": 3}


def test_a_prompt_longer_than_the_context_is_refused(smollm):
    with pytest.raises(FirstEpochError, match="context is 512"):
        smollm.generate("word " * 600, stream=False, max_new_tokens=1)


def test_stop_strings_end_the_text_before_them(smollm):
    text = smollm.generate("1, 2, 3, 4, 5,", stream=False, temperature=0, max_new_tokens=20, stop=[" 8"])
    assert text.startswith(" 6, 7,") and " 8" not in text and smollm.stats["finish_reason"] == "stop"


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
    from firstepoch.llm import models

    monkeypatch.setattr(models, "available_memory", lambda: 50 * 2**20)
    with pytest.raises(FirstEpochError, match=r"needs about 0\.\d GiB but only 0\.0 GiB"):
        firstepoch.llm.load(smollm_path)


def test_models_lists_the_bundled_model(smollm_path):
    found = {m["name"]: m for m in firstepoch.llm.find_models()}
    entry = found["smollm2-135m-instruct"]
    assert entry["quantization"] == "Q4_1" and entry["architecture"] == "llama"
    assert 130e6 < entry["parameters"] < 140e6
