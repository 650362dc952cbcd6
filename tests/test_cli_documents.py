"""`firstepoch embed / index / search / ask` end to end, through real subprocesses."""
import json

import pytest

from firstepoch.cli.documents import highlight, snippet
from tests.retrieval.conftest import docs_folder  # noqa: F401  (the fixture)
from tests.test_cli import cli


@pytest.fixture(scope="module")
def indexed(docs_folder, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    name = str(tmp_path_factory.mktemp("indexes") / "docs-index")
    result = cli("index", docs_folder, "--index", name)
    assert result.returncode == 0, result.stderr
    return name, result.stdout


def test_index_prints_a_report(indexed):
    _, out = indexed
    assert "17 indexed" in out and "1 no text" in out and "1 unreadable" in out and "1 skipped" in out
    assert "scanned.pdf" in out and "broken.pdf" in out and "photo.bin" in out
    assert "chunks from 17 files (all-minilm-l6-v2)" in out


def test_search_json_and_text(indexed):
    name, _ = indexed
    result = cli("search", "zebra herd near the lake", "--index", name, "-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert hits[0]["source"] == "reports/survey.pdf" and hits[0]["page"] == 1 and len(hits) == 2
    text = cli("search", "Bell Rock lighthouse", "--index", name, "-k", "1")
    assert "1. page.html  score" in text.stdout and "lighthouse" in text.stdout


def test_ask_refuses_what_the_documents_do_not_say(indexed):
    name, _ = indexed
    result = cli("ask", "What is the exchange rate between euros and yen today?", "--index", name, "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["answered"] is False and answer["citations"] == []


def test_ask_streams_an_answer_with_numbered_sources(indexed):
    name, _ = indexed
    result = cli("ask", "How many animals were in the zebra herd?", "--index", name, "--max-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert "[1] reports/survey.pdf, page 1  (score" in result.stdout


def test_unknown_search_mode(indexed):
    result = cli("search", "anything", "--index", indexed[0], "--mode", "fuzzy")
    assert result.returncode == 2 and "search mode 'fuzzy': use one of hybrid, vector, lexical" in result.stderr


def test_embed_prints_vectors():
    result = cli("embed", "hello world", "a second text", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["dim"] == 384 and len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 384


BAD_INPUT = [
    (["index", "/no/such/folder", "--index", "x"], "/no/such/folder: no such file or folder"),
    (["search", "anything", "--index", "never-made"], "no index 'never-made'"),
    (["index", ".", "--index", "x", "--chunk-tokens", "32", "--overlap", "40"], "--overlap 40 must be smaller"),
    (["embed", "text", "--model", "/no/such/model"], "no such embedding model"),
]


def test_bad_input_is_one_line_and_exit_2():
    from tests.cli_runner import run_commands

    for (args, message), (code, _, stderr) in zip(BAD_INPUT, run_commands([args for args, _ in BAD_INPUT])):
        assert code == 2, (args, stderr)
        assert message in stderr and "Traceback" not in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, (args, stderr)


def test_snippet_centres_on_the_query_words():
    text = "filler words here. " * 40 + "The otter census counted 37 otters in the river. " + "more filler. " * 40
    s = snippet(text, "how many otters were counted", width=120)
    assert "otter census counted 37" in s and s.startswith("... ") and s.endswith(" ...")
    assert highlight("Otters swim", "otter") == "[bold yellow]Otters[/bold yellow] swim"
