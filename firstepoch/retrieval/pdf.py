"""The text of a PDF as a reader sees it: lines joined into paragraphs, running headers, footers and page numbers
dropped, words broken at a line end mended, headings found by their type size (and each page told which section
it is in), short lines (code, table rows, list items) kept as lines.

pdfium (through pypdfium2) gives the characters in reading order with their boxes and font sizes; the rest is
decided here from the geometry of the lines: where a line starts and ends against the page's text margins, the
space above it, its type size against the body text's.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_SOFT_HYPHENS = re.compile("[\ufffe\u00ad\u2010]?[\ufffe\u00ad]\\s*")  # pdfium marks a word broken at a line end
_PAGE_NUMBER = re.compile(r"(?i)^(page\s+)?(\d+|[ivxlc]+)(\s*(of|/)\s*\d+)?$")
MAX_PAGE_CHARS = 200_000  # past this a page's text is cut (a page of a few thousand words holds 20,000)
MAX_IMAGE_PIXELS = 4_000_000  # a page image is made smaller than asked for rather than larger than this
HIGHLIGHT = (255, 214, 0, 96)  # the passage's lines on a page image: translucent yellow


@dataclass
class Line:
    text: str
    x0: float  # where the first character starts
    x1: float  # where the last one ends
    top: float  # baseline of the first character (PDF points from the bottom of the page)
    bottom: float  # baseline of the last one (lower than `top` when pdfium joined a hyphenated line)
    size: float  # type size of the first character


@dataclass
class Heading:
    offset: int  # where it starts in the page's text
    level: int  # 0 for the largest type
    text: str


def page_lines(textpage) -> list[Line]:
    """The text lines of one pdfium text page, with their geometry; visual lines that pdfium broke in two (at a
    superscript, say) are one line again."""
    import pypdfium2.raw as raw

    n = min(textpage.count_chars(), MAX_PAGE_CHARS)
    if n <= 0:
        return []
    text = textpage.get_text_range(0, n)
    if len(text) != n:  # characters outside the BMP: no one-to-one map to boxes; lines without geometry
        return [Line(t, 0.0, 0.0, 0.0, 0.0, 0.0) for t in text.replace("\r", "").split("\n") if t.strip()]
    lines: list[Line] = []
    at = 0
    for raw_line in text.split("\n"):
        first, last = at, at + len(raw_line) - 1
        at += len(raw_line) + 1
        while first <= last and text[first].isspace():
            first += 1
        while last >= first and text[last].isspace():
            last -= 1
        if first > last:
            continue
        left, right = textpage.get_charbox(first)[0], textpage.get_charbox(last)[2]
        top, bottom = _baseline(textpage, first), _baseline(textpage, last)
        # the middle of three characters' sizes: a superscript at either end does not make it a footnote
        size = sorted(float(raw.FPDFText_GetFontSize(textpage.raw, i)) for i in (first, (first + last) // 2, last))[1]
        line = Line(_SOFT_HYPHENS.sub("", text[first:last + 1]), left, right, top, bottom, size)
        previous = lines[-1] if lines else None
        if previous and line.x0 >= previous.x1 - 1 and abs(line.top - previous.bottom) < 0.6 * max(previous.size, 1):
            gap = " " if line.x0 - previous.x1 > 0.2 * previous.size else ""
            lines[-1] = Line(previous.text + gap + line.text, previous.x0, line.x1, previous.top, line.bottom,
                             previous.size if len(previous.text) >= len(line.text) else line.size)
        else:
            lines.append(line)
    return lines


def _baseline(textpage, index: int) -> float:
    import ctypes

    import pypdfium2.raw as raw

    x, y = ctypes.c_double(), ctypes.c_double()
    raw.FPDFText_GetCharOrigin(textpage.raw, index, x, y)
    return y.value


def _key(text: str) -> str:
    return re.sub(r"\d+", "#", " ".join(text.lower().split()))


def _edge_lines(pages: list[list[Line]], end: int) -> set[tuple[int, int]]:
    """(page, line) of the running headers (end=0) or footers (end=-1): page numbers, lines that repeat at that
    end of several pages once their numbers are masked, and lines set apart at the page's usual header height
    that carry a number (a chapter's name and its page)."""
    candidates = [(p, end if end == 0 else len(lines) - 1) for p, lines in enumerate(pages) if len(lines) >= 2]
    counts = Counter(_key(pages[p][i].text) for p, i in candidates)
    heights = Counter(round(pages[p][i].top) for p, i in candidates)
    usual = [h for h, c in heights.items() if c >= max(2, len(candidates) // 4)]
    drop = set()
    for p, i in candidates:
        line = pages[p][i]
        neighbour = pages[p][1 if end == 0 else i - 1]
        apart = abs(line.bottom - neighbour.top) > 1.8 * max(line.size, 1)
        numbered = bool(re.search(r"(^\d+\s)|(\s\d+$)", line.text.strip()))
        if (_PAGE_NUMBER.match(line.text.strip()) or (counts[_key(line.text)] >= 3 and apart)
                or (apart and numbered and any(abs(line.top - h) <= 2 for h in usual))):
            drop.add((p, i))
    return drop


def _body(pages: list[list[Line]]) -> tuple[float, float, float]:
    """The body text's type size (the commonest, by characters), its usual line spacing and left margin."""
    sizes = Counter()
    for lines in pages:
        for line in lines:
            sizes[round(line.size, 1)] += len(line.text)
    size = sizes.most_common(1)[0][0] if sizes else 10.0
    gaps, lefts = [], Counter()
    for lines in pages:
        for a, b in zip(lines, lines[1:]):
            if abs(a.size - size) < 0.3 and abs(b.size - size) < 0.3 and 0 < a.bottom - b.top < 3 * size:
                gaps.append(a.bottom - b.top)
        lefts.update(round(line.x0) for line in lines if abs(line.size - size) < 0.3)
    gaps.sort()
    spacing = gaps[len(gaps) // 2] if gaps else 1.2 * size
    return size, spacing, (lefts.most_common(1)[0][0] if lefts else 0.0)


def layout(pages: list[list[Line]]) -> list[tuple[str, list[Heading]]]:
    """Each page's text (paragraphs apart by a blank line) and its headings, from the lines of every page of one
    document (headers and footers are found across pages)."""
    drop = _edge_lines(pages, 0) | _edge_lines(pages, -1)
    pages = [[line for i, line in enumerate(lines) if (p, i) not in drop] for p, lines in enumerate(pages)]
    size, spacing, left = _body(pages)
    heading_sizes = sorted({round(line.size, 1) for lines in pages for line in lines
                            if _is_heading(line, size)}, reverse=True)
    out = []
    for lines in pages:
        body = [line.x1 for line in lines if abs(line.size - size) < 0.3]
        right = sorted(body)[int(0.9 * (len(body) - 1))] if len(body) >= 3 else max((x.x1 for x in lines), default=0)
        text, headings = "", []
        for i, line in enumerate(lines):
            heading = _is_heading(line, size)
            if i:
                previous = lines[i - 1]
                text += _joint(previous, line, size, spacing, left, right, heading or _is_heading(previous, size))
            if heading:
                headings.append(Heading(len(text), heading_sizes.index(round(line.size, 1)), line.text.strip()))
            text += line.text.strip()
        out.append((text, headings))
    return out


def _is_heading(line: Line, body: float) -> bool:
    return line.size >= 1.12 * body and len(line.text.split()) <= 16 and bool(re.search(r"[^\W\d_]", line.text))


def _joint(previous: Line, line: Line, size: float, spacing: float, left: float, right: float,
           heading: bool) -> str:
    """What goes between two lines: a blank line between paragraphs, a space inside one (nothing after a word
    broken by a hyphen), a line break after a line that stops short of the margin (code, a table row)."""
    gap = previous.bottom - line.top
    scale = max(previous.size, line.size) / size if size else 1.0
    full = previous.x1 >= right - max(2.5 * previous.size, 0.03 * right)
    indented = line.x0 > left + 0.8 * size and abs(line.size - size) < 0.3
    if (heading or abs(previous.size - line.size) > 0.5 or gap > 1.18 * spacing * scale or gap < -spacing
            or (indented and full and previous.text.rstrip()[-1:] in ".:!?")):
        return "\n\n"
    if not full:
        return "\n"
    if re.search(r"[^\W\d_]-$", previous.text) and line.text[:1].islower():
        return ""  # a hyphenated compound broken at its hyphen ("well-" / "known")
    return " "


def page_image(path, number: int, passage: str = "", width: int = 900) -> bytes:
    """Page `number` (1-based) of the PDF at `path` as a PNG `width` pixels wide (fewer when the page is so tall
    that it would pass MAX_IMAGE_PIXELS), with the lines of `passage` on it highlighted."""
    import io
    import math

    import pypdfium2 as pdfium
    from PIL import Image, ImageDraw

    from firstepoch.errors import FirstEpochError

    pdf = pdfium.PdfDocument(str(path))
    try:
        if not 1 <= number <= len(pdf):
            raise FirstEpochError(f"{path}: no page {number} (it has {len(pdf)})")
        page = pdf[number - 1]
        w, h = page.get_size()
        if not (w > 0 and h > 0 and math.isfinite(w * h)):
            raise FirstEpochError(f"{path}: page {number} has no size to draw ({w} x {h} points)")
        scale = min(width / w, math.sqrt(MAX_IMAGE_PIXELS / (w * h)))
        image = page.render(scale=scale).to_pil().convert("RGBA")
        wanted = " ".join(passage.split())
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        textpage = page.get_textpage()
        lines = page_lines(textpage) if wanted else []
        textpage.close()
        page.close()
        for line in lines:
            text = " ".join(line.text.split())
            if len(text) >= 8 and line.size > 0 and _in_passage(text, wanted):
                top = h - (max(line.top, line.bottom) + 0.85 * line.size)  # PDF points run up from the bottom
                bottom = h - (min(line.top, line.bottom) - 0.3 * line.size)
                draw.rectangle([line.x0 * scale, top * scale, line.x1 * scale, bottom * scale], fill=HIGHLIGHT)
        out = io.BytesIO()
        Image.alpha_composite(image, overlay).convert("RGB").save(out, "PNG")
        return out.getvalue()
    finally:
        pdf.close()


def _in_passage(line: str, passage: str, least: int = 12) -> bool:
    """Whether a page line is part of the passage: inside it, or cut by its first or last character."""
    if line in passage:
        return True
    longest = min(len(line), 400)  # a line longer than a passage's edge is a hostile one: whole or not at all
    return any(passage.endswith(line[:k]) or passage.startswith(line[-k:]) for k in range(least, longest))
