"""The persistent index on real documents: retrieval, incremental updates, crash safety, the HNSW graph."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from firstepoch.errors import FirstEpochError
from firstepoch.retrieval import index as index_module
from firstepoch.retrieval.index import Index

from tests.retrieval.conftest import ROOT

QUESTIONS = [  # question -> the file that answers it
    ("How many instances does the wine recognition data have?", "wine_data.rst"),
    ("Which dataset has photographs of famous people's faces collected from the web?", "lfw.rst"),
    ("What are the petal and sepal measurements of iris flowers?", "iris.rst"),
    ("Where did the zebra herd live and how many animals were counted?", "reports/survey.pdf"),
    ("When did the lighthouse keeper light the lamp?", "page.html"),
    ("How do I fine-tune a pretrained model on my own images?", "README.md"),
    ("forest cover type from cartographic variables", "covtype.rst"),
]


@pytest.fixture()
def docs(docs_folder, tmp_path):
    folder = tmp_path / "docs"
    shutil.copytree(docs_folder, folder)
    return folder


def consistent(ix: Index) -> None:
    """No duplicate chunks, the text table and the FTS table agree, every file's chunk count holds."""
    db = ix.db
    count = lambda table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: E731
    assert count("chunks") == count("chunks_fts")
    for path, n in db.execute("SELECT path, chunks FROM files").fetchall():
        assert db.execute("SELECT COUNT(*) FROM chunks WHERE path = ?", (path,)).fetchone()[0] == n, path
    dup = db.execute("SELECT COUNT(*) FROM (SELECT path, start, page FROM chunks GROUP BY path, page, start "
                     "HAVING COUNT(*) > 1)").fetchone()[0]
    assert dup == 0


@pytest.fixture(scope="module")
def built(docs_folder, tmp_path_factory):
    """An index of the documents, built once, for the tests that only read it."""
    ix = Index.open(str(tmp_path_factory.mktemp("built") / "index"), create=True)
    report = ix.add(docs_folder)
    yield ix, report
    ix.close()


def test_index_reports_every_file_and_finds_the_right_one(built):
    ix, report = built
    status = {f.path: f.status for f in report.files}
    assert status["reports/survey.pdf"] == "indexed" and status["page.html"] == "indexed"
    assert status["reports/scanned.pdf"] == "no text" and status["broken.pdf"] == "unreadable"
    assert status["photo.bin"] == "skipped" and report.count("indexed") == 17
    consistent(ix)
    for question, source in QUESTIONS:
        top3 = [h.source for h in ix.search(question, k=3)]
        assert source in top3, (question, top3)
    hit = ix.search("zebra herd Naivasha", k=1)[0]
    assert (hit.source, hit.page) == ("reports/survey.pdf", 1)
    assert ix.search("rainfall in March millimetres", k=1)[0].page == 2


def test_search_modes_and_bad_queries(built):
    ix, _ = built
    for mode in ("vector", "lexical", "hybrid"):
        hits = ix.search("Bell Rock lighthouse", k=2, mode=mode)
        assert hits[0].source == "page.html", mode
        assert "Bell Rock lighthouse keeper lit the lamp" in hits[0].text and -1.0 <= hits[0].score <= 1.0
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))  # best first
    assert ix.search("!!! ???", k=3, mode="lexical") == []
    with pytest.raises(FirstEpochError, match="search mode"):
        ix.search("x", mode="fuzzy")
    with pytest.raises(FirstEpochError, match="empty"):
        ix.search("  ")


def test_reindexing_is_incremental(docs, monkeypatch):
    with Index.open("t", create=True) as ix:
        ix.add(docs)
        ids_before = {p: ids for p, ids in _ids_by_file(ix).items()}
        embedded = []
        original = ix.embedder.embed
        monkeypatch.setattr(ix.embedder, "embed", lambda texts, **kw: embedded.extend(texts) or original(texts, **kw))
        again = ix.add(docs)
        assert again.count("unchanged") == 17 + 2 and again.chunks_added == 0 and embedded == []
        # change one file, delete another, add a third
        (docs / "page.html").write_text("<p>The ferry to Orkney leaves at seven every morning.</p>")
        (docs / "iris.rst").unlink()
        (docs / "new.md").write_text("# Kettles\n\nA kettle boils water for tea in about three minutes.\n")
        report = ix.add(docs)
        status = {f.path: f.status for f in report.files}
        assert status["page.html"] == "indexed" and status["iris.rst"] == "removed" and status["new.md"] == "indexed"
        assert all(t for t in embedded) and not any("sepal" in t for t in embedded)  # only changed files embedded
        consistent(ix)
        after = _ids_by_file(ix)
        assert after[str(docs / "wine_data.rst")] == ids_before[str(docs / "wine_data.rst")]  # untouched
        for mode in ("vector", "lexical", "hybrid"):  # deleted or replaced text is never returned
            for query in ("Bell Rock lighthouse keeper lamp", "iris sepal petal Fisher"):
                texts = " ".join(h.text for h in ix.search(query, k=10, mode=mode))
                assert "Bell Rock" not in texts and "sepal length" not in texts.lower(), (mode, query)
        assert ix.search("When does the ferry to Orkney leave?", k=1)[0].source == "page.html"
        assert ix.search("how long does a kettle take to boil", k=1)[0].source == "new.md"


def _ids_by_file(ix):
    out = {}
    for path, i in ix.db.execute("SELECT path, id FROM chunks ORDER BY id"):
        out.setdefault(path, []).append(i)
    return out


CRASH = textwrap.dedent("""
    import os, signal, sys
    from firstepoch.retrieval.index import Index
    ix = Index.open(sys.argv[1])
    inserts = 0
    def trace(sql):
        global inserts
        if sql.startswith("INSERT INTO chunks "):
            inserts += 1
            if inserts == int(sys.argv[3]):  # in the middle of a transaction
                os.kill(os.getpid(), signal.SIGKILL)
    ix.db.set_trace_callback(trace)
    ix.add(sys.argv[2])
""")


def test_a_killed_indexing_run_leaves_a_usable_index(docs, tmp_path):
    name = str(tmp_path / "crash-index")
    with Index.open(name, create=True) as ix:
        ix.add(docs)
        before = len(ix)
        wine_ids = _ids_by_file(ix)[str(docs / "wine_data.rst")]
    for f in ("wine_data.rst", "README.md", "lfw.rst"):  # every file changes: the run has work to do
        (docs / f).write_text((docs / f).read_text() + "\n\nAppendix: the otter census counted 37 otters.\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CRASH, name, str(docs), "5"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed, mid-transaction
    with Index.open(name) as ix:  # reopens; the interrupted transaction is gone
        consistent(ix)
        assert len(ix) == before and _ids_by_file(ix)[str(docs / "wine_data.rst")] == wine_ids
        assert ix.search("How many zebras were counted near the lake?", k=1)[0].source == "reports/survey.pdf"
        assert "otter" not in " ".join(h.text for h in ix.search("otter census", k=5, mode="lexical"))
        report = ix.add(docs)  # and the next run finishes the job
        assert {f.path for f in report.files if f.status == "indexed"} == {"wine_data.rst", "README.md", "lfw.rst"}
        consistent(ix)
        assert ix.search("how many otters were counted", k=3)[0].text.count("otter")


def test_the_hnsw_graph_agrees_with_exact_search_and_survives_a_lost_file(docs, monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 10)  # small enough that this collection uses the graph
    queries = [q for q, _ in QUESTIONS]
    with Index.open("g", create=True) as ix:
        ix.add(docs)
        graph_file = ix._ann_file(ix.generation)
        assert graph_file.exists()
        graph = [[h.score for h in ix.search(q, k=3, mode="vector")] for q in queries]  # true cosines
        exact = _exact_top_scores(ix, queries, 3)
        # as good as the exact top 3, up to the graph's fp16 rounding (near-ties may swap places)
        np.testing.assert_allclose(np.sort(graph, axis=1), np.sort(exact, axis=1), atol=5e-3)
        (docs / "iris.rst").unlink()  # an incremental edit of the graph
        ix.add(docs)
        assert not graph_file.exists() and ix._ann_file(ix.generation).exists()
        gone = set(_ids_by_file(ix).get(str(docs / "iris.rst"), []))
        assert not gone
        ix._ann_file(ix.generation).unlink()  # as if the run had died after its last commit
    with Index.open("g") as ix, pytest.warns(UserWarning, match="rebuilding"):
        assert ix.search("wine recognition data instances", k=1, mode="vector")[0].source == "wine_data.rst"
    with Index.open("g") as ix:
        assert ix._ann_file(ix.generation).exists()


def _exact_top_scores(ix, queries, k):
    _, matrix = ix._all_vectors()
    return [np.sort(matrix @ v)[::-1][:k] for v in ix.embedder.embed(queries)]


def test_opening_with_another_model_is_refused(docs, tmp_path):
    from firstepoch.retrieval.embed import resolve_embedder

    other = tmp_path / "other-model"
    shutil.copytree(resolve_embedder(None), other, copy_function=os.symlink)
    with Index.open("m", create=True) as ix:
        ix.add(docs / "iris.rst")
    with pytest.raises(FirstEpochError, match="--rebuild"):
        Index.open("m", model=str(other))
    with pytest.raises(FirstEpochError, match="no index 'nope'"):
        Index.open("nope")
    with pytest.raises(FirstEpochError, match="index name"):
        Index.open("bad name!", create=True)
