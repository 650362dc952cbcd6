"""Running a model's work on its slot: generation streamed piece by piece, stopped when the client leaves,
when the request runs past its time limits, or when the server shuts down."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, fields
from typing import AsyncIterator

import anyio

from starlette.responses import StreamingResponse

from firstepoch.errors import FirstEpochError
from firstepoch.serve.errors import ApiError

_END = object()
_BATCH_SECONDS = 0.02  # pieces made within this time travel together: fewer thread hops and events per token


def _next_pieces(pieces, seconds: float) -> list:
    """The next piece of text, and any more that come within `seconds`; ends with _END when the generator does."""
    out, until = [], time.perf_counter() + seconds
    while True:
        piece = next(pieces, _END)
        out.append(piece)
        if piece is _END or time.perf_counter() >= until:
            return out


@dataclass
class Limits:
    idle_timeout: float = 60.0  # the longest wait for the next piece of an answer
    total_timeout: float = 600.0  # the longest a request may run
    max_body_bytes: int = 1 << 20  # JSON bodies
    max_upload_bytes: int = 20 << 20  # image and PDF uploads
    queue_size: int = 16


@dataclass
class Metrics:
    """What `/metrics` reports."""
    started: float = field(default_factory=time.time)
    requests: dict = field(default_factory=dict)  # (route, status) -> count
    completion_tokens: int = 0
    prompt_tokens: int = 0
    decode_seconds: float = 0.0
    prompt_seconds: float = 0.0
    cancelled: int = 0
    rejected_busy: int = 0

    def count(self, route: str, status: int) -> None:
        self.requests[(route, status)] = self.requests.get((route, status), 0) + 1


def checked_sampling(options: dict) -> dict:
    """`options` for `LanguageModel.generate`, refused with a 400 now if `Sampling` would refuse them later
    (after a stream's headers were sent)."""
    from firstepoch.llm.generate import Sampling

    try:
        Sampling(**{f.name: options[f.name] for f in fields(Sampling) if options.get(f.name) is not None})
    except FirstEpochError as exc:
        raise ApiError(400, str(exc)) from None
    return options


def prompt_ids(lm, text: str, special: bool, max_tokens: int | None, default_max: int,
               context: int | None = None) -> tuple[list[int], int]:
    """Token ids of a prompt and the number of tokens to generate; a prompt that leaves no room in the context
    (the model's, or a request's own smaller `context`: Ollama's num_ctx) is a 400 with the counts. A text longer
    than the context could hold even in the vocabulary's longest tokens is refused before the tokenizer sees it."""
    limit = min(lm.context, context or lm.context)
    whose = f"the model's context is {lm.context}" if limit == lm.context else f"num_ctx is {limit}"
    longest = getattr(lm.tokenizer, "max_token_chars", 64)
    if len(text) > limit * longest:
        raise ApiError(400, f"the prompt has {len(text):,} characters, more than {limit} tokens can hold ({whose}); "
                            f"shorten it", code="context_length_exceeded")
    ids = lm.encode(text, special=special)
    if not ids:
        raise ApiError(400, "the prompt is empty; give at least one token of text")
    room = limit - len(ids)
    if room <= 0:
        raise ApiError(400, f"the prompt has {len(ids)} tokens but {whose}; shorten it",
                       code="context_length_exceeded")
    return ids, min(max_tokens or default_max, room)


async def start_generation(served, ids: list[int], max_new_tokens: int, options: dict):
    """A request's own `Generation` of `served.obj` (nothing runs until `stream_generation` iterates it on the
    model's slot); its `stats` are that request's alone. A JSON schema (or a tool-call grammar) is compiled here,
    off the event loop (the first one also builds the grammar's view of the vocabulary); one that cannot be used
    is a 400."""
    options = {k: v for k, v in options.items() if v is not None or k not in ("json_schema", "grammar")}
    if "json_schema" not in options and "grammar" not in options:
        return served.obj.generate(ids, max_new_tokens=max_new_tokens, stream=True, **options)
    return await asyncio.to_thread(served.obj.generate, ids, max_new_tokens=max_new_tokens, stream=True, **options)


async def stream_generation(served, generation, state) -> AsyncIterator[str]:
    """Text pieces of `generation` (from `start_generation`), holding the model's slot until the generator is
    closed.

    `state` is the server's (its limits, metrics and shutdown flag). The caller must already hold `served.slot`.
    If the consumer stops iterating (a client disconnect cancels it), the generation is closed on the slot's
    thread before the slot is given back. `generation.stats` holds the counts afterwards; its `finish_reason` is
    "timeout" or "shutdown" when it was cut short here.
    """
    slot, pieces, stats = served.slot, generation, generation.stats
    limits, metrics, stopping = state.limits, state.metrics, state.stopping
    reader, loop = slot.reader(), asyncio.get_running_loop()
    deadline = time.monotonic() + limits.total_timeout
    finished = False
    try:
        while True:
            if stopping():
                stats.finish_reason = "shutdown"
                break
            wait = min(limits.idle_timeout, deadline - time.monotonic())
            if wait <= 0:
                stats.finish_reason = "timeout"
                break
            with anyio.move_on_after(wait) as scope:
                batch = await loop.run_in_executor(reader, _next_pieces, pieces, _BATCH_SECONDS)
            if scope.cancelled_caught:
                stats.finish_reason = "timeout"
                break
            ended = batch and batch[-1] is _END
            text = "".join(batch[:-1] if ended else batch)
            if text:
                yield text
            if ended:
                break
        finished = True
    finally:
        if not finished:
            metrics.cancelled += 1
        with anyio.CancelScope(shield=True):  # even when cancelled: free the model before the slot
            await loop.run_in_executor(reader, pieces.close)
            if reader is not slot.thread:
                reader.shutdown(wait=False)
        metrics.prompt_tokens += stats.prompt_tokens
        metrics.completion_tokens += stats.completion_tokens
        metrics.decode_seconds += stats.decode_seconds
        metrics.prompt_seconds += stats.prompt_seconds


async def chat_prompt(lm, messages: list[dict], max_tokens: int | None, default_max: int,
                      context: int | None = None, tools: list[dict] | None = None) -> tuple[list[int], int]:
    """`prompt_ids` of the chat template's rendering of `messages` (and `tools`, for a template that describes
    them), both done on a worker thread: a template runs under its own time bound (firstepoch.llm.chat), never on
    the event loop."""
    def work():
        try:
            return prompt_ids(lm, lm.render_chat(messages, tools), True, max_tokens, default_max, context)
        except FirstEpochError as exc:
            raise ApiError(400, str(exc)) from None

    return await anyio.to_thread.run_sync(work)


async def generated_text(request, served, generation, state) -> str | None:
    """The whole text of `generation` (from `start_generation`) when it is not streamed, on the model's slot;
    None when the client went away first (its generation is stopped then, as a stream's is)."""
    text, error = None, None
    async with served.slot, anyio.create_task_group() as group:
        async def watch():
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            text = "".join([piece async for piece in stream_generation(served, generation, state)])
        except Exception as exc:  # raised below, as itself: the task group would wrap it in an ExceptionGroup
            error = exc
        group.cancel_scope.cancel()
    if error is not None:
        raise error
    return text


class ReservedStream(StreamingResponse):
    """A streamed answer whose place in the model's queue was reserved before its headers (`Slot.reserve`);
    the place is given back however the response ends, even if its body never started."""

    def __init__(self, content, reservation, **kwargs):
        super().__init__(content, **kwargs)
        self.reservation = reservation

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # a body left at a `yield` holds the model until it is closed
                await self.body_iterator.aclose()
            self.reservation.cancel()
