"""An index under pressure from outside: another connection re-indexing it while it is open (a server's), and a
disk that fills up during `firstepoch index`."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from firstepoch.retrieval import index as index_module
from firstepoch.retrieval.index import Index

from tests.retrieval.conftest import ROOT, sklearn_descriptions
from tests.retrieval.test_index import consistent

FILES = ("iris.rst", "wine_data.rst", "covtype.rst", "lfw.rst")  # real documents: 26 chunks, 154 of 32 tokens


@pytest.fixture()
def small_docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in FILES:
        shutil.copy(sklearn_descriptions() / name, folder / name)
    return folder


# ------------------------------------------------------------------------------------------ another connection
def test_an_open_index_finds_what_another_connection_indexed(small_docs, tmp_path):
    name = str(tmp_path / "shared-index")
    question = "how long does a kettle take to boil water for tea?"
    with Index.open(name, create=True) as served:  # as a server holds it
        served.add(small_docs)
        assert served.search(question, k=1, mode="vector")[0].source != "new.md"  # fills its caches
        (small_docs / "new.md").write_text("# Kettles\n\nA kettle boils water for tea in about three minutes.\n")
        (small_docs / "iris.rst").unlink()
        with Index.open(name) as other:  # another connection, as `firstepoch index` run meanwhile
            other.add(small_docs)
        for mode in ("vector", "hybrid"):
            hits = served.search(question, k=3, mode=mode)
            assert hits[0].source == "new.md", mode
        texts = " ".join(h.text for h in served.search("iris sepal petal Fisher", k=10, mode="vector"))
        assert "sepal length" not in texts.lower()


# ------------------------------------------------------------------------------------------ a full disk
CLI = textwrap.dedent("""
    import resource, signal, sys
    limit = int(sys.argv.pop(1))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from firstepoch.retrieval import index
    index.EXACT_LIMIT = int(sys.argv.pop(1))
    from firstepoch.cli import main
    sys.argv[0] = "firstepoch"
    main()
""")


def cli_with_file_size_limit(limit: int, exact_limit: int, *args):
    """`firstepoch ARGS` in a process whose writes fail past `limit` bytes of any file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CLI, str(limit), str(exact_limit), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def one_line_naming(result, folder) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"index {folder}: cannot write" in result.stderr and "free some space" in result.stderr
    return result.stderr


def test_a_full_disk_stops_indexing_with_one_line_and_keeps_the_index(small_docs, tmp_path):
    name = tmp_path / "full-index"
    with Index.open(name, create=True) as ix:
        ix.add(small_docs / "iris.rst")  # one file of the folder indexed before
        before = len(ix)
    result = cli_with_file_size_limit(100_000, index_module.EXACT_LIMIT, "index", small_docs, "--index", name)
    one_line_naming(result, name)
    with Index.open(name) as ix:  # the limit lifted: it opens as it was, and the run completes
        consistent(ix)
        assert len(ix) == before
        report = ix.add(small_docs)
        assert report.count("indexed") == 3 and report.count("unchanged") == 1
        consistent(ix)
        assert ix.search("How many instances does the wine recognition data have?", k=1)[0].source == "wine_data.rst"


def test_a_full_disk_while_writing_the_vector_graph_is_one_line_too(small_docs, tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 10)
    name = tmp_path / "graph-index"
    with Index.open(name, create=True) as ix:
        ix.add(small_docs, chunk_tokens=32, overlap=8)
        graph = ix._ann_file(ix.generation)
    assert graph.stat().st_size > 100_000
    graph.unlink()  # as if the last run had died before writing it: this run has only the graph to write
    result = cli_with_file_size_limit(65_536, 10, "index", small_docs, "--index", name, "--chunk-tokens", 32,
                                      "--overlap", 8)
    assert "the vector graph" in one_line_naming(result, name)
    assert not list(name.glob("vectors-*"))  # no part-written graph left taking space
    with Index.open(name) as ix:
        report = ix.add(small_docs, chunk_tokens=32, overlap=8)
        assert report.count("unchanged") == 4 and graph.exists()
        assert ix.search("wine recognition data instances", k=1, mode="vector")[0].source == "wine_data.rst"
