"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings."""
from __future__ import annotations

import base64
import json
import time
import uuid

import anyio
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from firstepoch.errors import FirstEpochError
from firstepoch.serve.errors import ApiError, field, read_json, seed, stop_list, text_list
from firstepoch.serve.streaming import (ReservedStream, chat_prompt, checked_sampling, generated_text, prompt_ids,
                                        start_generation, stream_generation)

router = APIRouter(prefix="/v1")
DEFAULT_MAX_TOKENS = 512


def _state(request: Request):
    return request.app.state.firstepoch


@router.get("/models")
async def list_models(request: Request):
    state = _state(request)
    return {"object": "list", "data": [
        {"id": s.name, "object": "model", "created": s.created, "owned_by": "firstepoch", "kind": s.kind}
        for s in state.registry.items.values() if s.kind != "index"]}


def _llm(request: Request, body: dict):
    name = field(body, "model", str, required=True)
    served = _state(request).registry.get(name, ("llm",))
    if served is None:
        known = ", ".join(s.name for s in _state(request).registry.of_kind("llm")) or "none"
        raise ApiError(404, f"model {name!r} is not served here (language models: {known})", code="model_not_found",
                       param="model")
    if field(body, "n", int, 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    return served


def _sampling(body: dict) -> dict:
    return checked_sampling({"temperature": field(body, "temperature", float, 1.0, low=0.0, high=2.0),
                             "top_p": field(body, "top_p", float, None, low=0.0, high=1.0),
                             "seed": seed(body), "stop": stop_list(body), "json_schema": _response_format(body)})


def _response_format(body: dict) -> dict | None:
    """The JSON schema the output must follow: OpenAI's response_format json_schema (its "schema"), any JSON object
    for json_object, None for text."""
    from firstepoch.llm.structured import ANY_OBJECT

    spec = field(body, "response_format", dict, None)
    kind = field(spec, "type", str, "text") if spec is not None else "text"
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind != "json_schema":
        raise ApiError(400, f"response_format.type must be text, json_object or json_schema, not {kind[:40]!r}",
                       param="response_format")
    described = field(spec, "json_schema", dict, required=True)
    return field(described, "schema", dict, ANY_OBJECT)


def _include_usage(body: dict) -> bool:
    return bool(field(field(body, "stream_options", dict, {}), "include_usage", bool, False))


def _max_tokens(body: dict) -> int | None:
    return field(body, "max_completion_tokens", int, None, low=1) or field(body, "max_tokens", int, None, low=1)


def _messages(body: dict) -> list[dict]:
    messages = field(body, "messages", list, required=True)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}] needs a role (system, user or assistant) and content",
                           param="messages")
        content = m.get("content") or ""
        if isinstance(content, list):  # the parts form: keep the text parts
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise ApiError(400, f"messages[{i}].content: a text part needs a 'text' string", param="messages")
            content = "".join(texts)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
        message = {"role": "system" if m["role"] == "developer" else m["role"], "content": content}
        message.update({k: m[k] for k in ("tool_calls", "tool_call_id", "name") if m.get(k)})  # see llm.tools
        out.append(message)
    if not out:
        raise ApiError(400, "messages is empty", param="messages")
    return out


def _tools(body: dict):
    """The tools the model may call and whether it must (llm.tools), or None: no tools, or tool_choice none."""
    from firstepoch.llm.tools import chosen_tools, read_tools

    if not body.get("tools"):
        return None
    try:
        tools, required = chosen_tools(read_tools(body["tools"]), body.get("tool_choice"))
    except FirstEpochError as exc:
        raise ApiError(400, str(exc), param="tool_choice" if "tool_choice" in str(exc) else "tools") from None
    if tools and body.get("response_format") and body["response_format"].get("type", "text") != "text":
        raise ApiError(400, "tools and a JSON response_format cannot be combined: send one of them",
                       param="response_format")
    return (tools, required) if tools else None


@router.post("/chat/completions")
async def chat_completions(request: Request):
    from firstepoch.llm.tools import syntax_for

    body = await read_json(request)
    served = _llm(request, body)
    sampling, tools, messages = _sampling(body), _tools(body), _messages(body)
    syntax = listed = None
    if tools is not None:  # in the template's own tool-call syntax, else the JSON one any template carries
        syntax = await anyio.to_thread.run_sync(syntax_for, served.obj)  # may compile the template
        try:
            messages, listed, options = syntax.prepare(messages, *tools)
        except FirstEpochError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        sampling.update(options)
    ids, max_new = await chat_prompt(served.obj, messages, _max_tokens(body), DEFAULT_MAX_TOKENS, tools=listed)
    return await _complete(request, served, ids, max_new, sampling, bool(body.get("stream")), chat=True,
                           include_usage=_include_usage(body), tools=syntax)


@router.post("/completions")
async def completions(request: Request):
    body = await read_json(request)
    served = _llm(request, body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string", param="prompt")
    sampling = _sampling(body)
    ids, max_new = prompt_ids(served.obj, prompt, False, _max_tokens(body) or 16, 16)
    return await _complete(request, served, ids, max_new, sampling, bool(body.get("stream")), chat=False,
                           include_usage=_include_usage(body))


def _answer(text: str, stats, syntax) -> tuple[dict, str]:
    """A tool-using answer as OpenAI's message and finish reason: its tool calls (with any words around them), or
    its reply."""
    reply, calls = syntax.read(text)
    if not calls:
        return {"role": "assistant", "content": reply}, _finish(stats)
    return {"role": "assistant", "content": reply, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
        for c in calls]}, "tool_calls"


async def _complete(request, served, ids, max_new, sampling, stream: bool, chat: bool, include_usage: bool,
                    tools=None):
    state = _state(request)
    kind = "chat.completion" if chat else "text_completion"
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    generation = await start_generation(served, ids, max_new, sampling)  # this request's own text and stats

    def choice(text: str | None, finish: str | None, delta: bool) -> dict:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        message = ({"content": text} if text is not None else {}) if delta else {"role": "assistant",
                                                                                   "content": text}
        return {"index": 0, ("delta" if delta else "message"): message, "logprobs": None, "finish_reason": finish}

    def usage() -> dict:
        s = generation.stats
        return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                "total_tokens": s.prompt_tokens + s.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": s.cached_tokens}}  # not prefilled again

    if not stream:
        text = await generated_text(request, served, generation, state)
        if text is None:  # the client has gone: nobody to answer
            return Response(status_code=499)
        answer = choice(text, _finish(generation.stats), delta=False)
        if tools:
            answer["message"], answer["finish_reason"] = _answer(text, generation.stats, tools)
        return {"id": rid, "object": kind, "created": created, "model": served.name, "choices": [answer],
                "usage": usage()}

    reservation = served.slot.reserve()  # a full queue is a 503 before any byte is sent

    async def events():
        async with reservation:  # waits its turn; released however the stream ends
            chunk = kind + ".chunk" if chat else kind
            if chat:
                first = {"role": "assistant", "content": ""}
                yield _sse({"id": rid, "object": chunk, "created": created, "model": served.name,
                            "choices": [{"index": 0, "delta": first, "logprobs": None, "finish_reason": None}]})
            finish, pieces = None, []
            async for piece in stream_generation(served, generation, state):
                if tools:  # the answer is read whole, then sent as one delta of calls or of words
                    pieces.append(piece)
                    continue
                yield _sse({"id": rid, "object": chunk, "created": created, "model": served.name,
                            "choices": [choice(piece, None, delta=True)]})
            if tools:
                message, finish = _answer("".join(pieces), generation.stats, tools)
                deltas = [{"content": message["content"]}] if message["content"] else []  # words, then the calls
                if "tool_calls" in message:
                    deltas.append({"tool_calls": [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]})
                for delta in deltas:
                    yield _sse({"id": rid, "object": chunk, "created": created, "model": served.name,
                                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]})
            last = {"id": rid, "object": chunk, "created": created, "model": served.name,
                    "choices": [choice(None if chat else "", finish or _finish(generation.stats), delta=True)]}
            yield _sse(last)
            if include_usage:
                yield _sse({"id": rid, "object": chunk, "created": created, "model": served.name, "choices": [],
                            "usage": usage()})
            yield "data: [DONE]\n\n"

    return ReservedStream(events(), reservation, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _finish(stats) -> str:
    reason = stats.finish_reason
    return reason if reason in ("stop", "length") else "length"  # timeout/shutdown: cut short


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


@router.post("/embeddings")
async def embeddings(request: Request):
    body = await read_json(request)
    state = _state(request)
    name = field(body, "model", str, required=True)
    served = state.registry.get(name, ("embedder",))
    if served is None:
        known = ", ".join(s.name for s in state.registry.of_kind("embedder")) or "none"
        raise ApiError(404, f"embedding model {name!r} is not served here (embedding models: {known})",
                       code="model_not_found", param="model")
    texts = text_list(body)
    encoding = field(body, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be float or base64", param="encoding_format")
    embedder = served.obj
    async with served.slot:
        vectors = await served.slot.run(embedder.embed, texts)
        tokens = sum(embedder.count_tokens(texts)) + 2 * len(texts)
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64"
             else [float(x) for x in v]} for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": served.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
