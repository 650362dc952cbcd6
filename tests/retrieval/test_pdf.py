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


@pytest.fixture(scope="module")
def chunks(pages, embedder):
    return chunk_pages(pages, "R-data.pdf", embedder.count_tokens, embedder.token_offsets, 200, 32, 256)


@pytest.mark.parametrize("question, words", [
    ("Which encoding should a text file for Windows programs use?", "UTF-16LE"),
    ("Is there another R package that talks to the libxml2 library?", "package xml2"),
])
def test_the_quote_is_the_sentence_of_the_passages_that_answers(chunks, embedder, question, words):
    from firstepoch.retrieval.rag import Citation, best_quote

    citations = [Citation(n, c.source, c.page, 0.5, c.text) for n, c in enumerate(
        [c for c in chunks if c.page in (9, 10, 11)], 1)]
    quote = best_quote(question, citations, embedder.embed)
    assert words in quote.text
    source = citations[quote.number - 1].text
    assert " ".join(source[quote.start:quote.end].split()) == quote.text  # word for word from the passage
    assert len(quote.text.split()) <= 60


def test_an_answer_is_supported_when_its_words_are_in_the_passages(chunks):
    from firstepoch.retrieval.rag import Citation, supported

    page = [Citation(n, c.source, c.page, 0.5, c.text) for n, c in enumerate([c for c in chunks if c.page == 10], 1)]
    assert supported('Use "UTF-16LE", what Windows calls Unicode [1].', page)
    assert not supported("Save it as a compressed JSON archive with a checksum header.", page)
    assert not supported("I don't know: the sources do not say.", page)
    assert not supported("", page)


def test_a_page_image_highlights_the_passage(pages):
    import io

    import numpy as np
    from PIL import Image

    from firstepoch.retrieval.pdf import page_image

    passage = pages[9].text[pages[9].text.index("6. Encodings"):][:400]
    image = np.asarray(Image.open(io.BytesIO(page_image(MANUAL, 10, passage, 600))).convert("RGB")).astype(int)
    assert image.shape[1] == 600
    yellow = (image[..., 0] > 200) & (image[..., 1] > 170) & (image[..., 2] < 160)
    rows = np.flatnonzero(yellow.any(axis=1))
    # the passage's five lines, in the upper middle of the page (under the code sample)
    assert 0.25 < rows.min() / image.shape[0] < rows.max() / image.shape[0] < 0.5
    plain = np.asarray(Image.open(io.BytesIO(page_image(MANUAL, 10, "", 600))).convert("RGB")).astype(int)
    assert not ((plain[..., 0] > 200) & (plain[..., 1] > 170) & (plain[..., 2] < 160)).any()


def test_a_page_image_of_a_huge_page_is_bounded_in_pixels(tmp_path):
    import io

    import pypdfium2 as pdfium
    from PIL import Image

    from firstepoch.errors import FirstEpochError
    from firstepoch.retrieval.pdf import MAX_IMAGE_PIXELS, page_image

    pdf = pdfium.PdfDocument.new()
    pdf.new_page(14400, 14400)  # 200 x 200 inches, the largest page PDF allows
    pdf.save(tmp_path / "huge.pdf")
    pdf.close()
    image = Image.open(io.BytesIO(page_image(tmp_path / "huge.pdf", 1, "", 2000)))
    assert image.width * image.height <= MAX_IMAGE_PIXELS
    with pytest.raises(FirstEpochError, match="no page 2"):
        page_image(tmp_path / "huge.pdf", 2)
