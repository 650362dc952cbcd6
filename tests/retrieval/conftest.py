"""Real documents to index: scikit-learn's dataset descriptions (14 .rst files), this project's README,
PDFs with text written by matplotlib, an image-only PDF, an HTML page and a binary file."""
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def sklearn_descriptions() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "descr"


def write_text_pdf(path: Path, pages: list[str]) -> None:
    """A PDF whose pages hold real (extractable) text, through matplotlib's PDF backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        for text in pages:
            fig = plt.figure(figsize=(8.5, 11))
            for row, line in enumerate(text.split("\n")):
                fig.text(0.08, 0.92 - 0.03 * row, line, fontsize=10)
            pdf.savefig(fig)
            plt.close(fig)


PDF_PAGES = ["Field notes, spring survey.\nThe zebra herd near Lake Naivasha counted 412 animals this year.",
             "Second page of the notes.\nRainfall in March was 81 millimetres, well above the average."]


@pytest.fixture(scope="session")
def docs_folder(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("docs") / "docs"
    folder.mkdir()
    for f in sorted(sklearn_descriptions().glob("*.rst")):
        shutil.copy(f, folder / f.name)
    # the README's own search examples ask about the wine data and quote the answer's sources, and ask the world
    # cup question the tests ask of documents that do not hold the answer: left out of the copy, so that each
    # question of the tests has one document that answers it, or none
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in readme if "wine" not in line.lower() and "world cup" not in line.lower()]
    (folder / "README.md").write_text("".join(kept), encoding="utf-8")
    (folder / "reports").mkdir()
    write_text_pdf(folder / "reports" / "survey.pdf", PDF_PAGES)
    Image.new("RGB", (200, 260), "white").save(folder / "reports" / "scanned.pdf")  # pixels only: no text
    (folder / "page.html").write_text(
        "<html><head><title>Ignored title</title><script>var secret = 'javascript text';</script>"
        "<style>p {color: red}</style></head><body><h1>Lighthouse log</h1><p>The Bell Rock lighthouse "
        "keeper lit the lamp at dusk on 1 February 1811.</p></body></html>", encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7 this is not really a PDF")
    (folder / "photo.bin").write_bytes(bytes(range(256)) * 8)
    return folder


@pytest.fixture(scope="session")
def embedder():
    from firstepoch.retrieval.embed import load_embedder

    return load_embedder()
