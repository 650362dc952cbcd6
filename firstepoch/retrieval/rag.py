"""Answers from your documents (retrieval-augmented generation): search the index, fit the best passages
into the model's context by rank, and let the LLM answer from them with numbered citations.

When even the best passage scores under `threshold` (cosine similarity), the documents most likely don't
hold the answer: `ask` says so instead of letting the model guess.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

NO_ANSWER_THRESHOLD = 0.3  # cosine similarity; chosen on the retrieval evaluation (BENCHMARKS.md)
ANSWER_TOKENS = 200  # the longest answer; the passages get the rest of the context
# greedy (the same answer every time), with a repetition penalty that keeps a small model from looping
ANSWER_SAMPLING = {"temperature": 0.0, "repetition_penalty": 1.1}
SYSTEM = ("You answer questions using only the numbered sources you are given. Cite the sources you use by "
          "their numbers, like [1]. If the sources do not contain the answer, say that you don't know.")


@dataclass
class Citation:
    number: int
    source: str
    page: int | None
    score: float
    text: str
    path: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}, page {self.page}" if self.page else self.source

    def to_json(self) -> dict:
        return {"number": self.number, "source": self.source, "page": self.page, "score": round(self.score, 4),
                "text": self.text}


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    answered: bool  # False: no passage scored over the threshold, and no model was asked
    stats: object = None  # the generation's llm.GenerationStats (None when no model was asked)


class AnswerStream:
    """An answer being generated: iterate for text pieces; `citations` are known from the start, `text`
    holds what has been streamed so far, `stats` the generation's figures (None when no model was asked)."""

    def __init__(self, question: str, citations: list[Citation], pieces: Iterator[str], answered: bool,
                 stats=None):
        self.question, self.citations, self.answered, self.stats = question, citations, answered, stats
        self._pieces = pieces
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close:
            close()

    def result(self) -> Answer:
        for _ in self:
            pass
        return Answer(self.question, self.text, self.citations, self.answered, self.stats)


@dataclass
class AnswerPlan:
    """What answering a question takes, before any token is generated: a refusal when no passage is similar
    enough, else the citations and the chat messages (and their token ids) to give the model."""

    question: str
    refusal: str | None
    citations: list[Citation]
    messages: list[dict]
    prompt_ids: list[int]


def plan_answer(lm, question: str, hits, threshold: float = NO_ANSWER_THRESHOLD,
                max_tokens: int = ANSWER_TOKENS) -> AnswerPlan:
    """The `AnswerPlan` for `question` from its search `hits`; `lm` (a `LanguageModel`) is used only when there
    is an answer to attempt, and may be None when `no_answer` already refuses. `ask` and the server's /v1/ask
    both use it."""
    refusal = no_answer(hits, threshold)
    if refusal is not None:
        return AnswerPlan(question, refusal, [], [], [])
    citations, messages = fit_context(lm, question, hits, max_tokens, threshold)
    return AnswerPlan(question, None, citations, messages, lm.encode(lm.render_chat(messages), special=True))


def ask(index, question: str, model=None, k: int = 5, stream: bool = False,
        threshold: float = NO_ANSWER_THRESHOLD, max_tokens: int = ANSWER_TOKENS,
        temperature: float = ANSWER_SAMPLING["temperature"],
        repetition_penalty: float = ANSWER_SAMPLING["repetition_penalty"], **sampling) -> Answer | AnswerStream:
    """Answer `question` from `index`.

    Args:
        index: an open `Index`.
        question: the question, in plain words.
        model: a `LanguageModel`, or a name or path for `firstepoch.llm.load` (default: the bundled
            SmolLM2-135M-Instruct).
        k: passages to retrieve.
        stream: return an `AnswerStream` (iterate it for text as it comes) instead of an `Answer`.
        threshold: the lowest cosine similarity of the best passage for an answer to be attempted; passages
            under it are not shown to the model either.
        max_tokens: the longest answer; the passages get the rest of the context.
        temperature: 0 answers greedily (the same answer every time).
        repetition_penalty: above 1 keeps a small model from repeating itself.
    """
    hits = index.search(question, k=k)
    lm = None
    if no_answer(hits, threshold) is None:  # load a model only when there is an answer to attempt
        lm = _load_model(model) if model is None or isinstance(model, (str, Path)) else model
    plan = plan_answer(lm, question, hits, threshold, max_tokens)
    if plan.refusal is not None:
        result = AnswerStream(question, [], iter([plan.refusal]), answered=False)
    else:
        pieces = lm.chat(plan.messages, stream=True, max_new_tokens=max_tokens, temperature=temperature,
                         repetition_penalty=repetition_penalty, **sampling)
        result = AnswerStream(question, plan.citations, pieces, answered=True, stats=pieces.stats)
    return result if stream else result.result()


def _load_model(name):
    from firstepoch.llm.models import load  # a function-level import: the llm package is big to import

    return load(name, context=4096)  # room for the passages and the answer, with a modest KV cache


def _messages(question: str, passages: list[tuple[Citation, str]]) -> list[dict]:
    sources = "\n\n".join(f"[{c.number}] ({c.where})\n{text}" for c, text in passages)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"}]


def no_answer(hits, threshold: float = NO_ANSWER_THRESHOLD) -> str | None:
    """What to say instead of answering when no passage is similar enough to the question, else None."""
    best = max((h.score for h in hits), default=0.0)
    if best >= threshold:
        return None
    return (f"The indexed documents don't seem to contain the answer: the best matching passage scores "
            f"{best:.2f}, under the {threshold:.2f} needed to answer from it.")


def fit_context(lm, question: str, hits, max_tokens: int,
                threshold: float = NO_ANSWER_THRESHOLD) -> tuple[list[Citation], list[dict]]:
    """The chat messages for `lm`: passages scoring at least `threshold`, in rank order, while the prompt
    still leaves `max_tokens` for the answer; the first one is cut to fit when even it alone is too long (and its
    citation then quotes the part the model read).
    Never more than the context."""
    hits = [h for h in hits if h.score >= threshold]
    budget = lm.context - max_tokens

    def size(passages) -> int:
        return len(lm.encode(lm.render_chat(_messages(question, passages)), special=True))

    if size([]) > budget:
        from firstepoch.errors import FirstEpochError

        raise FirstEpochError(f"the question alone takes more than the model's context of {lm.context} tokens "
                              f"minus {max_tokens} for the answer; ask a shorter question or lower max_tokens")
    chosen: list[tuple[Citation, str]] = []
    for hit in hits:
        citation = Citation(len(chosen) + 1, hit.source, hit.page, hit.score, hit.text, hit.path)
        if size(chosen + [(citation, hit.text)]) <= budget:
            chosen.append((citation, hit.text))
        elif not chosen:  # cut the best passage down until it fits
            text = hit.text
            while text and size([(citation, text)]) > budget:
                text = text[: int(len(text) * 0.8)]
            if text:  # the citation quotes what the model read
                chosen.append((replace(citation, text=text), text))
            break
        else:
            break
    return [c for c, _ in chosen], _messages(question, chosen)

