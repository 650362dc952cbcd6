"""Answers from your documents (retrieval-augmented generation): search the index, fit the best passages
into the model's context by rank, and let the LLM answer from them with numbered citations.

When even the best passage scores under `threshold` (cosine similarity), the documents most likely don't
hold the answer: `ask` says so instead of letting the model guess.

Every answer also carries a quote: the passages' sentence that best matches the question, word for word. A
small model often paraphrases wrongly even from the right passage; when the model's answer is not supported by
the passages (most of its words are in none of them, or it says it doesn't know), the quote is the answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

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
    section: str = ""
    chunk: int | None = None  # the passage's id in the index (its page image: /v1/page/INDEX/CHUNK)

    @property
    def where(self) -> str:
        return f"{self.source}, page {self.page}" if self.page else self.source

    def to_json(self) -> dict:
        return {"number": self.number, "id": self.chunk, "source": self.source, "page": self.page,
                "section": self.section, "score": round(self.score, 4), "text": self.text}


@dataclass
class Quote:
    """The sentence (or two) of a cited passage that best matches the question, word for word."""

    number: int  # the citation it is from
    text: str
    start: int  # its span in that citation's text
    end: int
    score: float

    def __str__(self) -> str:
        return f'"{self.text}" [{self.number}]'

    def to_json(self) -> dict:
        return {"number": self.number, "text": self.text, "start": self.start, "end": self.end,
                "score": round(self.score, 4)}


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    answered: bool  # False: no passage scored over the threshold, and no model was asked
    stats: object = None  # the generation's llm.GenerationStats (None when no model was asked)
    quote: Quote | None = None  # the passages' best sentence for the question
    supported: bool = False  # the model's text is backed by the passages; if not, the quote is the answer

    @property
    def best(self) -> str:
        """The answer to show: the model's when the passages support it, else the quote."""
        if self.supported or self.quote is None:
            return self.text
        return f"{self.quote}"


class AnswerStream:
    """An answer being generated: iterate for text pieces; `citations` are known from the start, `text`
    holds what has been streamed so far, `stats` the generation's figures (None when no model was asked)."""

    def __init__(self, question: str, citations: list[Citation], pieces: Iterator[str], answered: bool,
                 stats=None, quote: Quote | None = None):
        self.question, self.citations, self.answered, self.stats = question, citations, answered, stats
        self.quote = quote
        self._pieces = pieces
        self.text = ""

    @property
    def supported(self) -> bool:
        """Whether what was generated so far is backed by the cited passages."""
        return self.answered and supported(self.text, self.citations)

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
        return Answer(self.question, self.text, self.citations, self.answered, self.stats, self.quote,
                      self.supported)


@dataclass
class AnswerPlan:
    """What answering a question takes, before any token is generated: a refusal when no passage is similar
    enough, else the citations and the chat messages (and their token ids) to give the model."""

    question: str
    refusal: str | None
    citations: list[Citation]
    messages: list[dict]
    prompt_ids: list[int]
    quote: Quote | None = None


def plan_answer(lm, question: str, hits, threshold: float = NO_ANSWER_THRESHOLD,
                max_tokens: int = ANSWER_TOKENS, embed: Callable[[list[str]], np.ndarray] | None = None) -> AnswerPlan:
    """The `AnswerPlan` for `question` from its search `hits`; `lm` (a `LanguageModel`) is used only when there
    is an answer to attempt, and may be None when `no_answer` already refuses. `embed` (the index's embedder)
    picks the quote. `ask` and the server's /v1/ask both use it."""
    refusal = no_answer(hits, threshold)
    if refusal is not None:
        return AnswerPlan(question, refusal, [], [], [])
    citations, messages = fit_context(lm, question, hits, max_tokens, threshold)
    quote = best_quote(question, citations, embed) if embed is not None else None
    return AnswerPlan(question, None, citations, messages, lm.encode(lm.render_chat(messages), special=True), quote)


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
    plan = plan_answer(lm, question, hits, threshold, max_tokens, index.embedder.embed)
    if plan.refusal is not None:
        result = AnswerStream(question, [], iter([plan.refusal]), answered=False)
    else:
        pieces = lm.chat(plan.messages, stream=True, max_new_tokens=max_tokens, temperature=temperature,
                         repetition_penalty=repetition_penalty, **sampling)
        result = AnswerStream(question, plan.citations, pieces, answered=True, stats=pieces.stats, quote=plan.quote)
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
        citation = Citation(len(chosen) + 1, hit.source, hit.page, hit.score, hit.text, hit.path, hit.section, hit.id)
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


# ------------------------------------------------------------------------------------------ quotes

_SENTENCE_END = re.compile(r"(?<=[.!?:;])[\"')\]]*\s+|\n\s*")
_WORD = re.compile(r"\w+")
_COMMON = set("a an and are as at be by can do does for from has have how i in is it its of on or that the this "
              "to was what when where which who why will with you your not no if then than so use used".split())
QUOTE_WORDS = 60  # the longest quote
QUOTE_OVERLAP_WEIGHT = 0.3  # quote score = cosine to the question + this x the share of the question's words
SUPPORTED_SHARE = 0.6  # of the answer's words that must be in the cited passages


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _COMMON and len(w) > 1}


def _spans(text: str) -> list[tuple[int, int]]:
    """Sentence spans of `text`; a line break ends a sentence too (PDF code and table rows are lines)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[start:m.start()].strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def best_quote(question: str, citations: list[Citation], embed: Callable[[list[str]], np.ndarray]) -> Quote | None:
    """The passages' sentence, or pair of consecutive sentences, that best matches `question`: by cosine
    similarity of their embeddings, plus the share of the question's words that it holds."""
    candidates = []  # (citation, start, end)
    for c in citations:
        spans = _spans(c.text)
        for i, (start, end) in enumerate(spans):
            if len(_WORD.findall(c.text[start:end])) >= 3:
                candidates.append((c, start, end))
            if i + 1 < len(spans) and len(_WORD.findall(c.text[start:spans[i + 1][1]])) <= QUOTE_WORDS:
                candidates.append((c, start, spans[i + 1][1]))
    if not candidates:
        return None
    vectors = np.asarray(embed([question] + [c.text[s:e] for c, s, e in candidates]), dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cosine = vectors[1:] @ vectors[0]
    asked = _content_words(question)
    overlap = np.array([len(asked & _content_words(c.text[s:e])) / max(1, len(asked)) for c, s, e in candidates])
    scores = cosine + QUOTE_OVERLAP_WEIGHT * overlap
    best = int(np.argmax(scores))
    c, start, end = candidates[best]
    return Quote(c.number, " ".join(c.text[start:end].split()), start, end, float(scores[best]))



def supported(answer: str, citations: list[Citation]) -> bool:
    """Whether `answer` is backed by the passages: it doesn't say it doesn't know, and most of its words
    (leaving out the question's common words and citation marks) occur in the cited passages."""
    text = re.sub(r"\[\d+\]", " ", answer)
    words = _content_words(text)
    if not words or re.search(r"\b(don't|do not|doesn't|does not|cannot|can't) (know|contain|say|mention)", text,
                              re.IGNORECASE):
        return False
    source = set().union(*(_content_words(c.text) for c in citations)) if citations else set()
    return len(words & source) / len(words) >= SUPPORTED_SHARE
