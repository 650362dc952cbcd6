"""Batched generation: eight prompts decoded together generate what each generates alone."""
import pytest

from firstepoch.errors import FirstEpochError
from firstepoch.llm.batch import generate_batch

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The three laws of robotics are",
           "A haiku about the sea:", "Photosynthesis is", "The best way to learn Python is", "In 1969, the first"]


def alone(smollm, prompt, **options):
    smollm.prompt_cache.clear()  # cold, as each sequence of a batch is
    return smollm.generate(prompt, stream=False, **options)


def test_greedy_text_is_the_same_in_a_batch_of_eight_as_alone(smollm):
    together = generate_batch(smollm, PROMPTS, max_new_tokens=24, temperature=0)
    assert [text for text, _ in together] == [alone(smollm, p, max_new_tokens=24, temperature=0) for p in PROMPTS]
    assert all(s.completion_tokens == 24 and s.finish_reason == "length" for _, s in together)


def test_sampled_text_with_a_seed_is_the_same_and_sequences_end_on_their_own(smollm):
    """Chats end at their end-of-turn token, at different steps; the rest of the batch goes on, and a one-token
    prompt (a decode step, not a prefill) is among them."""
    chats = [smollm.encode(smollm.render_chat([{"role": "user", "content": q}]), special=True)
             for q in ("Say yes or no.", "Name a fruit.", "What is 2 + 2?")]
    prompts = [*chats, "Hello", smollm.encode("The")]
    assert len(prompts[-1]) == 1
    together = generate_batch(smollm, prompts, max_new_tokens=64, temperature=0.8, top_k=40, seed=7)
    for i, (prompt, (text, stats)) in enumerate(zip(prompts, together)):
        assert text == alone(smollm, prompt, max_new_tokens=64, temperature=0.8, top_k=40, seed=7 + i)
    assert sum(s.finish_reason == "stop" for _, s in together) >= 2
    assert len({s.completion_tokens for _, s in together}) > 1  # they ended at different steps


def test_a_prompt_past_the_context_is_refused_before_anything_runs(smollm):
    with pytest.raises(FirstEpochError, match="prompt 1 has"):
        generate_batch(smollm, ["fine", list(range(5, 5 + smollm.context))], max_new_tokens=2)
    assert generate_batch(smollm, [], max_new_tokens=2) == []
