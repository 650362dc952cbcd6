"""Retrieval quality on a real document collection: recall@1, recall@5 and MRR for vector, lexical (BM25)
and hybrid search, plus the no-answer threshold of `ask`, in one run.

    python benchmarks/retrieval_eval.py [--chunk-tokens 200] [--overlap 32]

Collection: scikit-learn's 14 dataset descriptions (sklearn/datasets/descr/*.rst, shipped in the installed
package). Questions: benchmarks/data/sklearn_dataset_questions.json, written by a person who read the files
(not by this code); a retrieved chunk is relevant when it comes from the expected file and contains the
expected answer text. The same file has questions with no answer in the collection, to check the threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

QUESTIONS = Path(__file__).parent / "data" / "sklearn_dataset_questions.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--overlap", type=int, default=32)
    args = parser.parse_args()
    import sklearn.datasets

    from firstepoch.retrieval.index import SEARCH_MODES, Index
    from firstepoch.retrieval.rag import NO_ANSWER_THRESHOLD

    spec = json.loads(QUESTIONS.read_text(encoding="utf-8"))
    folder = Path(sklearn.datasets.__file__).parent / "descr"
    with tempfile.TemporaryDirectory() as tmp, Index.open(os.path.join(tmp, "eval"), create=True) as ix:
        report = ix.add(folder, chunk_tokens=args.chunk_tokens, overlap=args.overlap)
        print(f"{report.count('indexed')} files, {len(ix)} chunks ({args.chunk_tokens} tokens, overlap "
              f"{args.overlap}); {len(spec['questions'])} questions")
        print(f"{'mode':8s} {'recall@1':>9s} {'recall@5':>9s} {'MRR':>6s}")
        for mode in SEARCH_MODES:
            ranks = [_first_relevant(ix.search(x["q"], k=10, mode=mode), x) for x in spec["questions"]]
            r1 = np.mean([r == 1 for r in ranks])
            r5 = np.mean([r is not None and r <= 5 for r in ranks])
            mrr = np.mean([1 / r if r else 0.0 for r in ranks])
            print(f"{mode:8s} {r1:9.3f} {r5:9.3f} {mrr:6.3f}")
        answerable = [max(h.score for h in ix.search(x["q"], k=5)) for x in spec["questions"]]
        unanswerable = [max(h.score for h in ix.search(q, k=5)) for q in spec["unanswerable"]]
    print(f"best cosine per question: answerable min {min(answerable):.3f} / median {np.median(answerable):.3f}; "
          f"unanswerable max {max(unanswerable):.3f} / median {np.median(unanswerable):.3f}")
    t = NO_ANSWER_THRESHOLD
    print(f"threshold {t}: {sum(s < t for s in answerable)}/{len(answerable)} answerable questions refused, "
          f"{sum(s >= t for s in unanswerable)}/{len(unanswerable)} unanswerable ones attempted")


def _first_relevant(hits, item) -> int | None:
    for rank, hit in enumerate(hits, 1):
        if Path(hit.source).name == item["file"] and item["answer"] in " ".join(hit.text.split()):
            return rank
    return None


if __name__ == "__main__":
    main()
