"""Token ids from GGUF metadata equal llama.cpp's; byte-level BPE round-trips any text."""
from hypothesis import assume, given, settings
from hypothesis import strategies as st

STRINGS = ["Hello world!", "  leading spaces and   runs   of them\t\ttabs\n\n\nnewlines", "café naïve Œdipus résumé",
           "emoji 🙂🎉 and 日本語の文", "def f(x):\n    return x ** 2  # 12345 67", "It's we'll they've I'D",
           "numbers 3.14159 and 1,000,000", "<|im_start|>user\nhi<|im_end|>", "", " ", "\u00a0non-breaking\u2009thin",
           "a\x16b (a byte with no token: dropped by both)"]


def test_token_ids_equal_llama_cpp(smollm, llama):
    for text in STRINGS:
        ours = smollm.tokenizer.encode(text)
        assert ours == llama.tokenize(text.encode(), add_bos=False, special=False), text
        assert smollm.tokenizer.encode(text, special=True) == llama.tokenize(text.encode(), add_bos=False,
                                                                                special=True), text


def test_control_tokens_are_parsed_only_when_asked(smollm):
    tok = smollm.tokenizer
    assert tok.encode("<|im_end|>", special=True) == [tok.eos_id]
    assert tok.eos_id not in tok.encode("<|im_end|>")
    assert tok.eos_id in tok.end_ids


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_byte_level_bpe_round_trips_any_text(smollm, text):
    """Any text made of characters whose bytes all have tokens (SmolLM2's vocabulary lacks a few bytes, which
    llama.cpp drops too): merging pieces never loses or changes text."""
    tok = smollm.tokenizer
    assume(all(tok.decode(tok.encode(c)) == c for c in set(text)))
    assert smollm.tokenizer.decode(smollm.tokenizer.encode(text)) == text
