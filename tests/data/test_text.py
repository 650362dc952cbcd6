import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firstepoch import FirstEpochError
from firstepoch.data import samples
from firstepoch.data.text import BPETokenizer, CharTokenizer, read_corpus, tokenizer_from_config, train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    text = samples.shakespeare(tmp_path_factory.mktemp("s") / "shakespeare.txt").read_text()
    return text[:200_000]


@pytest.fixture(scope="module")
def bpe(corpus):
    return BPETokenizer.train(corpus, vocab_size=512)


@pytest.fixture(scope="module")
def char(corpus):
    return CharTokenizer.train(corpus)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_tokenizer_round_trips_any_text(char, text):
    assert char.decode(char.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_char_tokenizer_uses_one_id_per_known_character(char):
    ids = char.encode("ROMEO:")
    assert len(ids) == 6 and max(ids) < len(char.chars)
    assert "日" not in char.chars and len(char.encode("日")) == 3  # unseen: its three UTF-8 bytes
    assert char.vocab_size == len(char.chars) + 256


def test_bpe_compresses_the_corpus_and_respects_the_vocab_size(bpe, char, corpus):
    assert bpe.vocab_size == 512
    sample = corpus[:20_000]
    assert len(bpe.encode(sample)) < 0.6 * len(char.encode(sample))


@pytest.mark.parametrize("make", [lambda c: CharTokenizer.train(c[:5000]), lambda c: BPETokenizer.train(c[:5000], 300)])
def test_tokenizers_survive_json(make, corpus):
    tok = make(corpus)
    again = tokenizer_from_config(json.loads(json.dumps(tok.to_config())))
    text = corpus[5000:6000] + " 日本語 🙂"
    assert again.encode(text) == tok.encode(text) and again.decode(tok.encode(text)) == text


def test_shakespeare_is_speaker_and_lines(corpus):
    assert corpus.startswith("THESEUS:\nNow, fair Hippolyta")
    blocks = corpus.split("\n\n")[:50]
    assert all(block.splitlines()[0].endswith(":") for block in blocks)
    assert "**" not in corpus and "#" not in corpus


def test_read_corpus_files_folders_and_bad_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_bytes(b"caf\xe9 \xff ok")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = read_corpus(tmp_path)
    assert text == "hello\n\ncaf\ufffd \ufffd ok"
    assert "2 byte sequence(s) were not UTF-8" in str(caught[0].message)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file or folder"),
    (lambda p: p.mkdir(), "no text files"),
    (lambda p: p.write_text("  \n"), "the corpus is empty"),
])
def test_bad_corpora_are_clear_errors(tmp_path, make, message):
    path = tmp_path / "corpus"
    make(path)
    with pytest.raises(FirstEpochError, match=message):
        read_corpus(path)


def test_unknown_tokenizer_and_tiny_bpe_vocab():
    with pytest.raises(FirstEpochError, match="unknown tokenizer 'word'"):
        train_tokenizer("word", "abc")
    with pytest.raises(FirstEpochError, match="vocab_size > 256"):
        train_tokenizer("bpe", "abc", vocab_size=100)
