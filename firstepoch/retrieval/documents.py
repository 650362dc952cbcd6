"""Text out of documents: `.txt`, `.md`, `.pdf` (page by page, through pypdfium2) and `.html` (visible text).

`read_document(path)` gives the pages of a file; a file that yields no text or can't be read raises
`NoText` / `Unreadable`, which the indexer records in its extraction report instead of stopping.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


class NoText(Exception):
    """The file is readable but holds no text (a scanned PDF, an empty file)."""


class Unreadable(Exception):
    """The file can't be read as its kind (a broken or encrypted PDF, bytes that are not text)."""


@dataclass
class Page:
    text: str
    number: int | None  # 1-based page number for PDFs, None for documents without pages
    headings: list = field(default_factory=list)  # pdf.Heading: where the page's headings start, and their level


def read_text(path: Path) -> list[Page]:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise Unreadable("binary data, not text")
    return [Page(data.decode("utf-8", errors="replace"), None)]


def read_pdf(path: Path) -> list[Page]:
    import pypdfium2 as pdfium

    from firstepoch.retrieval.pdf import layout, page_lines

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise Unreadable("encrypted PDF (it needs a password)") from None
        raise Unreadable(f"not a readable PDF ({exc})") from None
    try:
        lines = []
        for i in range(len(pdf)):
            page = pdf[i]
            textpage = page.get_textpage()
            lines.append(page_lines(textpage))
            textpage.close()
            page.close()
    finally:
        pdf.close()
    return [Page(text, i + 1, headings) for i, (text, headings) in enumerate(layout(lines))]


class _VisibleText(HTMLParser):
    """Collects the text a browser shows: no scripts, styles, head or comments; blocks become lines."""

    HIDDEN = {"script", "style", "head", "noscript", "template", "svg", "title"}
    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
              "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dd", "dt", "hr", "main", "nav"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "div") else "\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "div") else "\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(re.sub(r"[ \t\r\n]+", " ", data))

    def text(self) -> str:
        lines = (line.strip() for line in "".join(self.parts).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_html(path: Path) -> list[Page]:
    (page,) = read_text(path)
    parser = _VisibleText()
    parser.feed(page.text)
    parser.close()
    return [Page(parser.text(), None)]


# suffix -> reader; what `firstepoch index` looks at
READERS = {".txt": read_text, ".md": read_text, ".markdown": read_text, ".rst": read_text,
           ".pdf": read_pdf, ".html": read_html, ".htm": read_html}


def read_document(path: str | Path) -> list[Page]:
    """The pages of a document with text. Raises NoText or Unreadable (the indexer's report says which)."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise Unreadable(f"unsupported file type {path.suffix or '(none)'}")
    try:
        pages = reader(path)
    except (NoText, Unreadable):
        raise
    except Exception as exc:  # a parser failing on one odd file must not stop the indexing of a folder
        raise Unreadable(f"{type(exc).__name__}: {exc}") from None
    pages = [p for p in pages if p.text.strip()]
    if not pages:
        raise NoText("no text extracted (a scanned or image-only PDF, or an empty file)")
    return pages
