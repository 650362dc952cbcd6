"""Retrieval quality on real documents: recall@1, recall@5 and MRR of firstepoch's vector, lexical (BM25) and
hybrid search, against sentence-transformers' exact search and a plain BM25 (rank_bm25) over the usual
pipeline (each page's raw text cut into 800-character windows overlapping by 150), plus the no-answer threshold
of `ask`, in one run.

    python benchmarks/retrieval_eval.py [--collection pdf|sklearn|all] [--chunk-tokens 200] [--overlap 32]

Collections:
- pdf: five real PDF manuals from Debian's packages (`apt-get install r-doc-pdf bash-doc gnuplot-doc`), 713
  pages; questions in benchmarks/data/pdf_manual_questions.json, written as users ask them by a person who read
  the pages, each with its file, page and a short answer string.
- sklearn: scikit-learn's 14 dataset descriptions (sklearn/datasets/descr/*.rst, in the installed package);
  questions in benchmarks/data/sklearn_dataset_questions.json.
A returned passage is relevant when it comes from the expected file and contains the answer string (spaces
collapsed). Each set also holds questions whose answer is in none of the documents, to check the threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
PDFS = ["/usr/share/R/doc/manual/R-intro.pdf", "/usr/share/R/doc/manual/R-data.pdf",
        "/usr/share/R/doc/manual/R-FAQ.pdf", "/usr/share/doc/bash/bashref.pdf", "/usr/share/doc/gnuplot/gnuplot.pdf"]
WINDOW, STEP = 800, 650  # the baselines' chunks: characters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", choices=["pdf", "sklearn", "all"], default="all")
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--no-baselines", action="store_true", help="only firstepoch's modes")
    parser.add_argument("--index", help="keep the index in this folder (a second run re-reads only what changed)")
    parser.add_argument("--ask", action="store_true", help="also ask every question with the bundled chat model")
    args = parser.parse_args()
    for name in (["pdf", "sklearn"] if args.collection == "all" else [args.collection]):
        files, spec = collection(name)
        print(f"\n## {name}: {len(files)} files, {len(spec['questions'])} questions, "
              f"{len(spec['unanswerable'])} unanswerable")
        evaluate(files, spec, args)


def collection(name: str) -> tuple[list[Path], dict]:
    if name == "sklearn":
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "descr"
        return sorted(folder.glob("*.rst")), json.loads((DATA / "sklearn_dataset_questions.json").read_text())
    missing = [p for p in PDFS if not Path(p).is_file()]
    if missing:
        sys.exit(f"{missing[0]} is missing: install the manuals with apt-get install r-doc-pdf bash-doc gnuplot-doc")
    return [Path(p) for p in PDFS], json.loads((DATA / "pdf_manual_questions.json").read_text())


def evaluate(files: list[Path], spec: dict, args) -> None:
    from firstepoch.retrieval.index import SEARCH_MODES, Index
    from firstepoch.retrieval.rag import NO_ANSWER_THRESHOLD

    questions = spec["questions"]
    print(f"{'method':34s} {'recall@1':>9s} {'recall@5':>9s} {'MRR':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.index or tmp)
        folder = base / f"docs-{len(files)}"  # a stable folder when the index is kept
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (folder / f.name).exists():
                os.symlink(f, folder / f.name)
        with Index.open(base / f"index-{len(files)}-{args.chunk_tokens}-{args.overlap}", create=True) as ix:
            started = time.perf_counter()
            report = ix.add(folder, chunk_tokens=args.chunk_tokens, overlap=args.overlap)
            seconds = time.perf_counter() - started
            for mode in SEARCH_MODES:
                ranks = [_first_relevant([(h.source, h.text) for h in ix.search(x["q"], k=10, mode=mode)], x)
                         for x in questions]
                _row(f"firstepoch {mode}", ranks)
            answerable = [max(h.score for h in ix.search(x["q"], k=5)) for x in questions]
            unanswerable = [max(h.score for h in ix.search(q, k=5)) for q in spec["unanswerable"]]
            chunks = len(ix)
            if args.ask:
                answers(ix, spec)
        if not args.no_baselines:
            baselines(files, questions, ix.embedder.name)
    print(f"(firstepoch: {report.count('indexed')} files read, {report.count('unchanged')} unchanged, {chunks} "
          f"chunks of {args.chunk_tokens} tokens, overlap "
          f"{args.overlap}, indexed in {seconds:.1f} s)")
    print(f"best cosine per question: answerable min {min(answerable):.3f} / median {np.median(answerable):.3f}; "
          f"unanswerable max {max(unanswerable):.3f} / median {np.median(unanswerable):.3f}")
    t = NO_ANSWER_THRESHOLD
    print(f"threshold {t}: {sum(s < t for s in answerable)}/{len(answerable)} answerable questions refused, "
          f"{sum(s >= t for s in unanswerable)}/{len(unanswerable)} unanswerable ones attempted")


def answers(ix, spec: dict) -> None:
    """`ask` with the bundled model: an answerable question counts when its answer string is in the model's
    text or in the quote; an unanswerable one when ask refuses it."""
    from firstepoch.retrieval.rag import _load_model

    lm = _load_model(None)
    in_text = in_quote = either = supported = 0
    started = time.perf_counter()
    for x in spec["questions"]:
        result = ix.ask(x["q"], model=lm)
        answer = " ".join(x["answer"].split())
        text = answer in " ".join(result.text.split())
        quoted = result.quote is not None and answer in result.quote.text
        in_text, in_quote, either = in_text + text, in_quote + quoted, either + (text or quoted)
        supported += result.supported
    refused = sum(not ix.ask(q, model=lm).answered for q in spec["unanswerable"])
    n = len(spec["questions"])
    print(f"ask (the bundled model): answer string in the text {in_text}/{n}, in the quote {in_quote}/{n}, in either "
          f"{either}/{n} ({either / n:.0%}); {supported}/{n} answers supported by their passages; "
          f"{refused}/{len(spec['unanswerable'])} unanswerable refused ({time.perf_counter() - started:.0f} s)")


def baselines(files: list[Path], questions: list[dict], model: str) -> None:
    """sentence-transformers' exact cosine search and rank_bm25's BM25Okapi over the same plain chunks."""
    from rank_bm25 import BM25Okapi
    from sentence_transformers import SentenceTransformer

    from firstepoch.retrieval.embed import resolve_embedder

    chunks = [(f.name, text) for f in files for text in _plain_chunks(f)]
    st = SentenceTransformer(str(resolve_embedder(model)), device="cpu")
    vectors = st.encode([t for _, t in chunks], batch_size=64, normalize_embeddings=True)
    bm25 = BM25Okapi([_words(t) for _, t in chunks])
    st_ranks, bm_ranks = [], []
    for x in questions:
        q = st.encode([x["q"]], normalize_embeddings=True)[0]
        st_ranks.append(_first_relevant([chunks[i] for i in np.argsort(-(vectors @ q))[:10]], x))
        bm_ranks.append(_first_relevant([chunks[i] for i in np.argsort(-bm25.get_scores(_words(x["q"])))[:10]], x))
    _row(f"sentence-transformers exact ({len(chunks)})", st_ranks)
    _row("rank_bm25 BM25Okapi", bm_ranks)


def _plain_chunks(file: Path) -> list[str]:
    """What a plain pipeline indexes: each page's text as pdfium gives it (a text file whole), in windows."""
    if file.suffix == ".pdf":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(file))
        pages = [pdf[i].get_textpage().get_text_bounded() for i in range(len(pdf))]
    else:
        pages = [file.read_text(encoding="utf-8")]
    return [page[i:i + WINDOW] for page in pages for i in range(0, max(1, len(page) - WINDOW + STEP), STEP)
            if page[i:i + WINDOW].strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _row(name: str, ranks: list[int | None]) -> None:
    r1 = np.mean([r == 1 for r in ranks])
    r5 = np.mean([r is not None and r <= 5 for r in ranks])
    mrr = np.mean([1 / r if r else 0.0 for r in ranks])
    print(f"{name:34s} {r1:9.3f} {r5:9.3f} {mrr:6.3f}")


def _first_relevant(hits: list[tuple[str, str]], item: dict) -> int | None:
    answer = " ".join(item["answer"].split())
    for rank, (source, text) in enumerate(hits, 1):
        if Path(source).name == item["file"] and answer in " ".join(text.split()):
            return rank
    return None


if __name__ == "__main__":
    main()
