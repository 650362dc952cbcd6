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


def test_the_batcher_lets_requests_join_and_leave_between_steps(smollm):
    """A server's Batcher in-process: two streams running, a third joining later, one closed early (its slot taken
    by a waiting one); each finished stream's tokens are those of the same prompt alone."""
    from firstepoch.llm.batch import Batcher
    from firstepoch.llm.generate import Sampling, sample_tokens

    batcher = Batcher(smollm, parallel=2)
    ends = set(smollm.tokenizer.end_ids)
    prompts = [smollm.encode(p) for p in PROMPTS[:4]]
    first, second = (batcher.submit(p, 12, Sampling(0.0), ends) for p in prompts[:2])
    left = batcher.submit(prompts[2], 12, Sampling(0.0), ends)  # waits: two slots
    batcher.step()
    got = {0: [next(first)], 1: [next(second)]}
    third = batcher.submit(prompts[3], 12, Sampling(0.0), ends)
    batcher.step()
    left.close()  # never started: taken out before it holds a slot
    first.close()  # leaves after two tokens: its slot goes to the third
    while batcher.has_work():
        batcher.step()
    got[1] += list(second)
    got[3] = list(third)
    for i in (1, 3):
        assert got[i] == list(sample_tokens(smollm.model, prompts[i], 12, temperature=0, stop=ends,
                                            context_shift=False))
    assert batcher.free and not batcher.running
    with pytest.raises(FirstEpochError, match="lower --parallel"):
        Batcher(smollm, parallel=10**7)


def test_a_generation_closed_early_leaves_the_batch(smollm):
    """What a server does when its client leaves: the Generation is closed, and its sequence is out of the batch
    at the next step (its slot free), not decoded on to its token limit."""
    import threading

    from firstepoch.llm.batch import Batcher

    batcher = Batcher(smollm, parallel=2)
    smollm.batcher = batcher
    try:
        generation = smollm.generate("Once upon a time", max_new_tokens=200, temperature=0)
        first_piece = threading.Event()

        def steps():  # the server's driver: steps while there is work, until the first piece is out
            while not first_piece.wait(0.01):
                if batcher.has_work():
                    batcher.step()

        stepper = threading.Thread(target=steps)
        stepper.start()
        assert next(generation)  # the first piece: the sequence is running
        first_piece.set()
        stepper.join()
        assert batcher.running
        generation.close()
        batcher.step()
        assert not batcher.running and sorted(batcher.free) == [0, 1]
    finally:
        smollm.batcher = None


def test_one_requests_error_ends_that_request_alone(smollm):
    """A request whose own sampling fails (here a grammar that refuses every token) ends with its error; the
    others in the batch go on to their full answers."""
    from firstepoch.llm.batch import Batcher
    from firstepoch.llm.generate import Sampling, sample_tokens

    class Refusing:  # a Constraint that allows nothing
        def mask(self, logits):
            raise FirstEpochError("the output grammar allows no next token")

    batcher = Batcher(smollm, parallel=2)
    ends = set(smollm.tokenizer.end_ids)
    prompt = smollm.encode(PROMPTS[0])
    good = batcher.submit(prompt, 8, Sampling(0.0), ends)
    bad = batcher.submit(smollm.encode(PROMPTS[1]), 8, Sampling(0.0), ends, constraint=Refusing())
    while batcher.has_work():
        batcher.step()
    with pytest.raises(FirstEpochError, match="allows no next token"):
        list(bad)
    assert list(good) == list(sample_tokens(smollm.model, prompt, 8, temperature=0, stop=ends, context_shift=False))
    with pytest.raises(FirstEpochError, match="needs 1 to"):
        batcher.submit([], 8, Sampling(0.0), ends)


def test_a_slot_keeps_its_cache_for_the_next_turn_of_the_chat(smollm):
    """A slot's KV cache outlives its request: the next request that starts the same way (a chat's next turn) takes
    that slot and prefills only what is new, and answers what one sequence with its prompt cache answers."""
    from firstepoch.llm.batch import Batcher
    from firstepoch.llm.generate import PromptCache, Sampling, sample_tokens

    ends = set(smollm.tokenizer.end_ids)
    first = [{"role": "user", "content": "What is a lighthouse for?"}]
    ids = smollm.encode(smollm.render_chat(first), special=True)
    batcher = Batcher(smollm, parallel=2)

    def run(prompt):
        stream = batcher.submit(prompt, 16, Sampling(0.0), ends)
        while batcher.has_work():
            batcher.step()
        return list(stream), stream.cached

    other, _ = run(smollm.encode("Once upon a time"))  # fills the other slot first
    answer, cached = run(ids)
    assert cached == 0 and answer
    again, cached = run(ids)
    assert again == answer and cached == len(ids) - 2  # the same prompt: the same answer, all but two reused
    reply = smollm.tokenizer.decode(answer[:-1] if answer[-1] in ends else answer)
    follow = smollm.encode(smollm.render_chat(first + [{"role": "assistant", "content": reply},
                                                       {"role": "user", "content": "Who keeps it running?"}]),
                           special=True)
    second, cached = run(follow)
    assert cached > len(ids)  # the first turn's prompt and some of its answer were not prefilled again
    single = PromptCache()  # one sequence, its own prompt cache, the same turns
    list(sample_tokens(smollm.model, ids, 16, temperature=0, stop=ends, context_shift=False, cache=single))
    assert list(sample_tokens(smollm.model, follow, 16, temperature=0, stop=ends, context_shift=False,
                              cache=single)) == second
    assert single.reused == cached


def test_a_server_batches_four_by_default_fewer_where_memory_is_short(smollm, monkeypatch):
    from firstepoch.llm import inference
    from firstepoch.llm.batch import AUTO_PARALLEL, auto_parallel

    config = smollm.model.config
    slot = inference.kv_cache_bytes(config)
    monkeypatch.setattr(inference, "available_memory", lambda: 100 * slot)
    assert auto_parallel(config, cores=2) == AUTO_PARALLEL == 4 and auto_parallel(config, cores=1) == 1
    monkeypatch.setattr(inference, "available_memory", lambda: 9 * slot)  # a quarter: room for two more slots
    assert auto_parallel(config, cores=16) == 3
    monkeypatch.setattr(inference, "available_memory", lambda: slot)
    assert auto_parallel(config, cores=16) == 1
