"""Cutting pages into chunks that fit the embedder: by tokens, with overlap, along paragraph and sentence
boundaries. Each chunk is an exact span of its page's text, so a citation can point at it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from firstepoch.retrieval.documents import Page

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*")


@dataclass
class Chunk:
    text: str
    source: str  # the file, relative to the indexed folder
    page: int | None  # 1-based page number in a PDF
    start: int  # character span in the page's text
    end: int
    title: str = ""  # the document's title, embedded with every chunk so that a chunk knows what it is about
    section: str = ""  # the headings the chunk is under ("3 Objects > 3.1 Intrinsic attributes"), when known

    @property
    def lexical_text(self) -> str:  # what BM25 sees: the headings too
        return f"{self.section}\n{self.text}" if self.section else self.text

    @property
    def embedding_text(self) -> str:
        head = " > ".join(x for x in (self.title, self.section) if x)
        return f"{head}\n\n{self.text}" if head else self.text


@dataclass
class _Unit:  # a sentence (or a piece of a long one): the smallest thing a chunk is made of
    start: int
    end: int
    tokens: int
    ends_paragraph: bool
    heading: bool = False  # a heading: a chunk starts with it rather than ends with it


def chunk_pages(pages: list[Page], source: str, count_tokens: Callable[[list[str]], list[int]],
                token_offsets: Callable[[str], list[tuple[int, int]]], max_tokens: int = 200,
                overlap: int = 32, hard_limit: int | None = None) -> list[Chunk]:
    """Chunks of at most `max_tokens` tokens that share about `overlap` tokens with the previous chunk.

    Args:
        pages: the document's pages.
        source: what the chunks cite.
        count_tokens: the embedder's token counter (a list of texts -> a list of counts).
        token_offsets: the embedder's tokenizer: text -> character span of each token.
        max_tokens: the chunk size to aim for.
        overlap: tokens repeated from the end of one chunk at the start of the next.
        hard_limit: the embedder's own limit; a chunk over it is re-split, never truncated.
    """
    hard_limit = hard_limit or max_tokens
    title = document_title(pages, source)
    room = hard_limit - (count_tokens([title])[0] + 2 if title else 0)  # the title is embedded with each chunk
    max_tokens = max(1, min(max_tokens, room))
    chunks, path = [], []  # path: the headings in force, one per level, carried from page to page
    for page in pages:
        units = _units(page.text, count_tokens, token_offsets, max_tokens)
        starts = {h.offset for h in page.headings}
        for unit in units:
            unit.heading = unit.start in starts
        headings = sorted(page.headings, key=lambda h: h.offset)
        for start, end in _pack(units, max_tokens, overlap):
            while headings and headings[0].offset <= start:
                path = _under(path, headings.pop(0))
            section = " > ".join(h.text for h in path)
            chunks.append(Chunk(page.text[start:end], source, page.number, start, end, title, section))
        for heading in headings:
            path = _under(path, heading)
    return _enforce_limit(chunks, count_tokens, token_offsets, max_tokens)


def _under(path: list, heading) -> list:
    """The headings in force after `heading`: those of higher levels, then it."""
    return [h for h in path if h.level < heading.level] + [heading]


def document_title(pages: list[Page], source: str, max_chars: int = 120) -> str:
    """A short name for the document: its file name in words plus its first line of prose (a heading, usually),
    skipping markup-only lines such as reStructuredText labels."""
    from pathlib import PurePath

    name = re.sub(r"[_\-.]+", " ", PurePath(source).stem).strip()
    for line in pages[0].text.splitlines() if pages else []:
        line = line.strip().strip("#=*-_ ").strip()
        if line and not line.startswith("..") and re.search(r"[^\W\d_]{3}", line):
            return f"{name}: {line}"[:max_chars]
    return name[:max_chars]


def _units(text: str, count_tokens, token_offsets, max_tokens: int) -> list[_Unit]:
    spans = []
    for paragraph in _spans(text, _PARAGRAPH, 0, len(text)):
        sentences = _spans(text, _SENTENCE, *paragraph)
        spans += [(s, e, i == len(sentences) - 1) for i, (s, e) in enumerate(sentences)]
    counts = count_tokens([text[s:e] for s, e, _ in spans]) if spans else []
    units = []
    for (s, e, last), n in zip(spans, counts):
        if n <= max_tokens:
            units.append(_Unit(s, e, n, last))
            continue
        pieces = _split_by_tokens(text, s, e, token_offsets, max_tokens)  # a sentence longer than a chunk
        units += [_Unit(a, b, n, last and k == len(pieces) - 1) for k, (a, b, n) in enumerate(pieces)]
    return units


def _spans(text: str, separator: re.Pattern, start: int, end: int) -> list[tuple[int, int]]:
    """Non-blank pieces of text[start:end] between separators, trimmed, as (start, end)."""
    spans, at = [], start
    for m in separator.finditer(text, start, end):
        spans.append((at, m.start()))
        at = m.end()
    spans.append((at, end))
    out = []
    for s, e in spans:
        piece = text[s:e]
        if piece.strip():
            s += len(piece) - len(piece.lstrip())
            e -= len(piece) - len(piece.rstrip())
            out.append((s, e))
    return out


def _split_by_tokens(text: str, start: int, end: int, token_offsets, max_tokens: int):
    """text[start:end] cut into pieces of at most `max_tokens` tokens, at token boundaries."""
    offsets = token_offsets(text[start:end])
    pieces = []
    for i in range(0, len(offsets), max_tokens):
        group = offsets[i:i + max_tokens]
        a = start + group[0][0]
        b = start + (offsets[i + max_tokens][0] if i + max_tokens < len(offsets) else end - start)
        pieces.append((a, len(text[:b].rstrip()) if b > a else b, len(group)))
    return [(a, b, n) for a, b, n in pieces if b > a]


def _pack(units: list[_Unit], max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy: add sentences while they fit; prefer to close a chunk at a paragraph end once it is
    two thirds full; the next chunk starts with the last sentences worth at most `overlap` tokens."""
    out, first = [], 0
    while first < len(units):
        last, total = first, units[first].tokens
        while last + 1 < len(units) and total + units[last + 1].tokens <= max_tokens:
            if units[last].ends_paragraph and total >= 2 * max_tokens // 3:
                break
            if units[last + 1].heading and total >= max_tokens // 4:
                break  # a chunk starts at a heading, and goes with the text under it
            last += 1
            total += units[last].tokens
        while last > first and units[last].heading:
            last -= 1  # never end on a heading
        out.append((units[first].start, units[last].end))
        if last + 1 >= len(units):
            break
        if units[last + 1].heading:
            first = last + 1  # a new section: nothing to repeat from the last one
            continue
        nxt, kept = last + 1, 0  # step back over sentences to repeat, never back to `first`
        while nxt - 1 > first and kept + units[nxt - 1].tokens <= overlap:
            nxt -= 1
            kept += units[nxt].tokens
        first = nxt
    return out


def _enforce_limit(chunks: list[Chunk], count_tokens, token_offsets, limit: int) -> list[Chunk]:
    """Tokens counted on the joined text can differ from the sum over sentences: re-split any chunk that
    ends up over the limit, into equal pieces (122 tokens over a limit of 120 make two of 61, not 120 and 2)."""
    counts = count_tokens([c.text for c in chunks]) if chunks else []
    out = []
    for chunk, n in zip(chunks, counts):
        if n <= limit:
            out.append(chunk)
            continue
        pieces = -(-n // limit)
        for a, b, _ in _split_by_tokens(chunk.text, 0, len(chunk.text), token_offsets, -(-n // pieces)):
            out.append(Chunk(chunk.text[a:b], chunk.source, chunk.page, chunk.start + a, chunk.start + b,
                             chunk.title, chunk.section))
    return out
