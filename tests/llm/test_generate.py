import pytest
import torch

from firstepoch import FirstEpochError
from firstepoch.llm.generate import sample_tokens
from firstepoch.models.transformer import Transformer, TransformerConfig


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, context=24))


def greedy_without_cache(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids[-model.config.context:]]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_decoding_with_the_cache_equals_full_forward_passes(model):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    assert list(sample_tokens(model.eval(), prompt, 12, temperature=0)) == greedy_without_cache(model, prompt, 12)


def test_top_k_1_and_a_tiny_top_p_are_greedy(model):
    prompt = [1, 2, 3]
    greedy = list(sample_tokens(model, prompt, 10, temperature=0))
    assert list(sample_tokens(model, prompt, 10, temperature=1.0, top_k=1, seed=5)) == greedy
    assert list(sample_tokens(model, prompt, 10, temperature=1.0, top_p=1e-6, seed=5)) == greedy


def test_sampling_is_reproducible_with_a_seed(model):
    a = list(sample_tokens(model, [1, 2], 15, temperature=1.0, seed=7))
    b = list(sample_tokens(model, [1, 2], 15, temperature=1.0, seed=7))
    c = list(sample_tokens(model, [1, 2], 15, temperature=1.0, seed=8))
    assert a == b and a != c


def test_generation_past_the_context_shifts_it_as_a_cache_free_reference_does(model):
    context = model.config.context
    window, expected = [1, 2, 3], []
    with torch.no_grad():
        for _ in range(60):
            token = int(model(torch.tensor([window]))[0, -1].argmax())
            expected.append(token)
            window = (window + [token])[-(context // 2):] if len(window) >= context else window + [token]
    assert list(sample_tokens(model, [1, 2, 3], 60, temperature=0)) == expected


def test_stop_tokens_end_generation(model):
    first = list(sample_tokens(model, [5], 1, temperature=0))[0]
    assert list(sample_tokens(model, [5], 10, temperature=0, stop={first})) == [first]


def test_bad_prompts_are_clear_errors(model):
    with pytest.raises(FirstEpochError, match="prompt is empty"):
        list(sample_tokens(model, [], 5))
    with pytest.raises(FirstEpochError, match="30 tokens but the model's context is 24"):
        list(sample_tokens(model, [1] * 30, 5))


def test_each_generation_keeps_its_own_stats():
    from firstepoch.data.text import CharTokenizer
    from firstepoch.llm.generate import LanguageModel

    tokenizer = CharTokenizer("abcdefgh")
    lm = LanguageModel(Transformer(TransformerConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1,
                                                     n_heads=4, context=24)), tokenizer)
    first, second = lm.generate("abc", max_new_tokens=5, temperature=0), lm.generate("abcdefg", max_new_tokens=2)
    "".join(first)
    "".join(second)  # (one model runs one generation at a time: the server's slot queues them)
    assert (first.stats.prompt_tokens, first.stats.completion_tokens, first.stats.finish_reason) == (3, 5, "length")
    assert (second.stats.prompt_tokens, second.stats.completion_tokens) == (7, 2)
    assert "3 prompt tokens" in first.stats.summary()
