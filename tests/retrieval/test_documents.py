"""Reading documents: text, PDF pages, visible HTML, and the files that yield nothing."""
import pytest

from firstepoch.retrieval.documents import NoText, Unreadable, read_document

from tests.retrieval.conftest import PDF_PAGES


def test_pdf_text_keeps_page_numbers(docs_folder):
    pages = read_document(docs_folder / "reports" / "survey.pdf")
    assert [p.number for p in pages] == [1, 2]
    assert "412 animals" in pages[0].text and "81 millimetres" in pages[1].text
    assert pages[0].text.split("\n")[0] == PDF_PAGES[0].split("\n")[0]


def test_html_gives_only_visible_text(docs_folder):
    (page,) = read_document(docs_folder / "page.html")
    assert "Bell Rock lighthouse" in page.text and "Lighthouse log" in page.text
    assert "javascript" not in page.text and "color" not in page.text and "Ignored title" not in page.text


def test_files_without_text_are_reported_not_raised_as_crashes(docs_folder, tmp_path):
    with pytest.raises(NoText):
        read_document(docs_folder / "reports" / "scanned.pdf")  # an image-only PDF
    with pytest.raises(Unreadable, match="not a readable PDF"):
        read_document(docs_folder / "broken.pdf")
    with pytest.raises(Unreadable, match="unsupported"):
        read_document(docs_folder / "photo.bin")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(NoText):
        read_document(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02 looks like text by name only")
    with pytest.raises(Unreadable, match="binary"):
        read_document(tmp_path / "binary.txt")


def test_undecodable_bytes_are_replaced(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (page,) = read_document(tmp_path / "latin1.txt")
    assert page.text == "caf\ufffd au lait"
