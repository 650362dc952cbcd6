"""PDF text as a reader sees it, on a real manual: R's "Data Import/Export" (Debian's r-doc-pdf, which `make test`
installs): running headers and page numbers gone, lines joined into paragraphs, words broken at a line end
mended, code kept line by line, headings found and carried by the chunks under them."""
from pathlib import Path

import pytest

from firstepoch.retrieval.chunk import chunk_pages
from firstepoch.retrieval.documents import read_document

MANUAL = Path("/usr/share/R/doc/manual/R-data.pdf")
pytestmark = pytest.mark.skipif(not MANUAL.is_file(), reason="Debian's r-doc-pdf is not installed "
                                "(make test installs it: apt-get install r-doc-pdf)")


@pytest.fixture(scope="module")
def pages():
    return read_document(MANUAL)


def raw_text(number: int) -> str:
    """pdfium's text of a page, its soft hyphens (U+FFFE) left in."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(MANUAL))
    try:
        textpage = pdf[number - 1].get_textpage()
        return textpage.get_text_range(0, textpage.count_chars())
    finally:
        pdf.close()


def test_running_headers_and_page_numbers_are_dropped(pages):
    assert raw_text(10).startswith("Chapter 1: Introduction 6")  # what pdfium gives  # what pdfium gives
    page = pages[9]
    assert page.number == 10
    assert "Chapter 1: Introduction" not in page.text
    assert page.text.startswith("Some care is needed if the strings contain embedded quotes.")
    # a page number alone at the top of an even page goes too
    assert not any(p.text.split("\n")[0].strip().isdigit() for p in pages)


def test_lines_join_into_paragraphs_and_code_stays_in_lines(pages):
    text = pages[9].text
    assert ("All of these functions can write to a connection which allows an encoding to be specified for the file, "
            "and write.table has a fileEncoding argument") in text  # three lines of the page, one paragraph
    assert "\n> write.table(df)\n" in text  # lines of code keep their breaks
    assert "\n\nThe second is the form of escape commonly used by spreadsheets.\n\n" in text


def test_words_broken_at_a_line_end_are_mended(pages):
    assert "fa\ufffecilities" in raw_text(11)  # "fa-" at the end of a line, "cilities" on the next
    assert "facilities" in pages[10].text
    for page in pages:
        assert "\ufffe" not in page.text and "\u00ad" not in page.text


def test_headings_start_chunks_and_chunks_know_their_section(pages, embedder):
    page = pages[9]
    assert [h.text for h in page.headings] == ["1.3 XML"]
    chunks = chunk_pages(pages, "R-data.pdf", embedder.count_tokens, embedder.token_offsets, 200, 32, 256)
    xml = [c for c in chunks if c.page == 10 and c.text.startswith("1.3 XML")]
    assert len(xml) == 1 and xml[0].section.endswith("1.3 XML")
    before = [c for c in chunks if c.page == 10 and c.end <= xml[0].start]
    assert before and all("1.3 XML" not in c.section and "1.3 XML" not in c.text for c in before)
    # a section goes on over the next page: its chunks still name it
    assert any(c.page == 11 and c.section.endswith("1.3 XML") for c in chunks)
    assert "1.3 XML" in xml[0].embedding_text.split("\n\n")[0]
