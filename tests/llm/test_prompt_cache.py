"""The prompt cache: a chat's next turn prefills only what is new, and answers as llama.cpp does with its cache."""
import pytest
import torch

from firstepoch.llm.generate import PromptCache, sample_tokens

FIRST = [{"role": "user", "content": "What is a lighthouse for?"}]
FOLLOW_UP = "And who keeps it running?"


def second_turn(answer: str) -> list[dict]:
    return FIRST + [{"role": "assistant", "content": answer}, {"role": "user", "content": FOLLOW_UP}]


def same_text(ours: list[str], theirs: list[str]) -> bool:
    """Word for word where llama.cpp runs its AVX-512 code (the logits are then its bit for bit); elsewhere the
    rounding differs and a near tie may go the other way some words in: the answers' starts agree."""
    from tests.llm.test_models import AVX512

    return ours == theirs if AVX512 else all(o[:40] == t[:40] for o, t in zip(ours, theirs, strict=True))


@pytest.mark.slow
def test_the_second_turn_reuses_the_first_and_answers_as_llama_cpp_does(smollm, llama):
    """llama-cpp-python keeps its KV cache between calls and evaluates only the part of a prompt after the tokens it
    holds, as firstepoch's prompt cache does: the second turn's answers are equal, word for word."""
    smollm.prompt_cache.clear()
    llama.reset()
    theirs = [llama.create_chat_completion(FIRST, temperature=0, max_tokens=32)["choices"][0]["message"]["content"]]
    first = smollm.chat(FIRST, temperature=0, max_new_tokens=32)
    ours = ["".join(first)]
    assert same_text(ours, theirs) and first.stats.cached_tokens == 0
    theirs.append(llama.create_chat_completion(second_turn(theirs[0]), temperature=0,
                                               max_tokens=32)["choices"][0]["message"]["content"])
    second = smollm.chat(second_turn(ours[0]), temperature=0, max_new_tokens=32)
    ours.append("".join(second))
    assert same_text(ours, theirs)
    # what was not prefilled again: the first turn's prompt and the answer's tokens, at least
    assert second.stats.cached_tokens > first.stats.prompt_tokens + first.stats.completion_tokens // 2
    assert second.stats.cached_tokens < second.stats.prompt_tokens
    assert "from the prompt cache" in second.stats.summary()


def test_the_same_prompt_again_gets_the_same_answer(smollm):
    """The last two prompt tokens are run again (a prefill's arithmetic, not a one-token step's): the same
    answer as with nothing cached, bit for bit in the logits that picked it."""
    smollm.prompt_cache.clear()
    cold = smollm.chat(FIRST, temperature=0, max_new_tokens=24)
    text = "".join(cold)
    warm = smollm.chat(FIRST, temperature=0, max_new_tokens=24)
    assert "".join(warm) == text and warm.stats.cached_tokens == cold.stats.prompt_tokens - 2
    ids = smollm.encode(smollm.render_chat(FIRST), special=True)
    cache = PromptCache()
    list(sample_tokens(smollm.model, ids, 1, temperature=0, context_shift=False, cache=cache))
    with torch.no_grad():
        cache.attach(smollm.model, ids, len(ids))
        again = smollm.model(torch.tensor([ids[-2:]]), start=len(ids) - 2, last_only=True)[0, -1]
        smollm.model.clear_cache()
        smollm.model.setup_cache(1, len(ids))
        whole = smollm.model(torch.tensor([ids]), last_only=True)[0, -1]
        smollm.model.clear_cache()
    assert torch.equal(again, whole)


def test_a_prompt_sharing_only_the_system_prompt_reuses_that_much(smollm):
    smollm.prompt_cache.clear()
    "".join(smollm.chat(FIRST, temperature=0, max_new_tokens=4))
    other = smollm.chat([{"role": "user", "content": "Name a colour."}], temperature=0, max_new_tokens=4)
    "".join(other)
    ids_a = smollm.encode(smollm.render_chat(FIRST), special=True)
    ids_b = smollm.encode(smollm.render_chat([{"role": "user", "content": "Name a colour."}]), special=True)
    shared = next(i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b)
    assert other.stats.cached_tokens == shared > 0  # SmolLM2's template opens with its default system prompt


def test_nothing_else_running_the_model_can_overwrite_the_cache(smollm):
    """Between generations the cache is held apart from the model: scoring another text with the model (its own
    temporary cache) leaves the next turn's answer as it would have been."""
    smollm.prompt_cache.clear()
    answer = "".join(smollm.chat(FIRST, temperature=0, max_new_tokens=24))
    undisturbed = "".join(smollm.chat(second_turn(answer), temperature=0, max_new_tokens=16))
    smollm.prompt_cache.clear()
    assert "".join(smollm.chat(FIRST, temperature=0, max_new_tokens=24)) == answer
    with torch.no_grad():
        smollm.model(torch.tensor([smollm.encode("Completely unrelated text about the sea and its tides.")]))
    second = smollm.chat(second_turn(answer), temperature=0, max_new_tokens=16)
    assert "".join(second) == undisturbed and second.stats.cached_tokens > 0


def test_the_cache_grows_with_the_conversation_and_keeps_its_positions(smollm):
    """A longer prompt than the cache holds: a bigger cache, the positions kept copied into it; a generation that
    fails inside the model (a token id past the vocabulary) leaves no stale cache behind."""
    model, cache = smollm.model, PromptCache()
    prompt = smollm.encode("The Bell Rock Lighthouse is the world's oldest surviving sea-washed lighthouse.")
    first = list(sample_tokens(model, prompt, 4, temperature=0, context_shift=False, cache=cache))
    held = cache.caches[0].k.shape[2]
    longer = prompt + first[:-1] + smollm.encode(" It was built by Robert Stevenson." * 36)
    assert len(longer) + 4 > held
    warm = list(sample_tokens(model, longer, 4, temperature=0, context_shift=False, cache=cache))
    assert cache.reused == len(prompt) + len(first) - 1 and cache.caches[0].k.shape[2] >= len(longer) + 4
    assert cache.ids == longer + warm[:-1]
    with pytest.raises(Exception, match="token ids"):
        list(sample_tokens(model, longer + [10**6], 4, temperature=0, context_shift=False, cache=cache))
    assert cache.caches is None and cache.ids == []
