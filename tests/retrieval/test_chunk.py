"""Chunking real documents: exact spans, token limits, overlap, boundaries."""
from hypothesis import given, settings, strategies as st

from firstepoch.retrieval.chunk import chunk_pages
from firstepoch.retrieval.documents import Page, read_document

from tests.retrieval.conftest import ROOT, sklearn_descriptions


def chunks_of(embedder, pages, max_tokens=120, overlap=24):
    return chunk_pages(pages, "doc", embedder.count_tokens, embedder.token_offsets, max_tokens, overlap,
                       embedder.max_text_tokens)


def test_chunks_are_exact_spans_within_the_limit(embedder):
    for path in [ROOT / "README.md", *sorted(sklearn_descriptions().glob("*.rst"))[:6]]:
        (page,) = read_document(path)
        chunks = chunks_of(embedder, [page])
        assert chunks and all(page.text[c.start:c.end] == c.text for c in chunks)
        assert max(embedder.count_tokens([c.text for c in chunks])) <= 120
        covered = set()
        for c in chunks:
            covered.update(range(c.start, c.end))
        words = [i for i, ch in enumerate(page.text) if not ch.isspace()]
        assert all(i in covered for i in words), f"{path.name}: text left out of every chunk"


def test_consecutive_chunks_overlap_and_end_at_sentences(embedder):
    text = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(200))
    chunks = chunks_of(embedder, [Page(text, None)], max_tokens=100, overlap=20)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end, "no overlap"
        assert a.text.endswith("."), "a chunk should end at a sentence boundary"


def test_paragraph_boundaries_are_preferred(embedder):
    paragraphs = ["First paragraph sentence one. It goes on a little. " * 3,
                  "Second paragraph about something else. " * 3, "Third one here. " * 3]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunks_of(embedder, [Page(text, None)], max_tokens=40, overlap=0)
    assert chunks[0].text == paragraphs[0].strip()  # the first paragraph fits: the chunk ends with it
    assert any(c.text.startswith("Second paragraph") for c in chunks)
    assert not any("It goes" in c.text and "Second" in c.text for c in chunks)


def test_a_sentence_longer_than_a_chunk_is_split_not_truncated(embedder):
    text = "a" * 3 + " " + " ".join(f"token{i}" for i in range(700))  # no sentence end at all
    chunks = chunks_of(embedder, [Page(text, None)], max_tokens=250, overlap=0)
    counts = embedder.count_tokens([c.text for c in chunks])
    assert len(chunks) > 1 and max(counts) <= 250
    assert "".join(c.text.replace(" ", "") for c in chunks) == text.replace(" ", "")


def test_page_numbers_follow_the_pages(embedder):
    pages = [Page("Page one text. " * 30, 1), Page("Page two text. " * 30, 2)]
    chunks = chunks_of(embedder, pages, max_tokens=50)
    assert {c.page for c in chunks} == {1, 2}
    assert all(("one" in c.text) == (c.page == 1) for c in chunks)


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=600))
def test_any_text_chunks_into_spans_under_the_limit(text):
    from firstepoch.retrieval.embed import load_embedder

    embedder = load_embedder()
    chunks = chunks_of(embedder, [Page(text, None)], max_tokens=32, overlap=8)
    assert all(text[c.start:c.end] == c.text and c.text.strip() for c in chunks)
    if chunks:
        assert max(embedder.count_tokens([c.text for c in chunks])) <= embedder.max_text_tokens
    assert bool(chunks) == bool(text.strip())
