"""Ollama-compatible routes: /api/tags, /api/show, /api/generate, /api/chat, /api/embed, /api/version."""
from __future__ import annotations

import functools
import hashlib
import json
import time
from datetime import datetime, timezone

import anyio
from fastapi import APIRouter, Request
from starlette.responses import Response

from firstepoch.errors import FirstEpochError
from firstepoch.serve.errors import ApiError, field, read_json, seed, stop_list, text_list
from firstepoch.serve.streaming import (ReservedStream, chat_prompt, checked_sampling, generated_text, prompt_ids,
                                        start_generation, stream_generation)

router = APIRouter(prefix="/api")
DEFAULT_NUM_PREDICT = 512


def _state(request: Request):
    return request.app.state.firstepoch


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _details(served) -> dict:
    config = served.obj.config if served.kind == "llm" else {}
    source = str(config.get("source", served.source))
    family = config.get("architecture", "bert" if served.kind == "embedder" else "llama")
    return {"parent_model": "", "format": "gguf" if source.endswith(".gguf") else "safetensors",
            "family": family, "families": [family], "parameter_size": _parameter_size(served),
            "quantization_level": config.get("quantization", "F32")}


def _parameter_size(served) -> str:
    if served.kind == "llm":
        n = served.obj.model.config.n_parameters()
    else:
        n = sum(p.numel() for p in served.obj.encoder.parameters())
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n else ""


@router.get("/version")
async def version():
    from firstepoch.version import __version__

    return {"version": __version__}


@router.get("/tags")
async def tags(request: Request):
    models = []
    for s in _state(request).registry.items.values():
        if s.kind not in ("llm", "embedder"):
            continue
        digest = hashlib.sha256(f"{s.name}:{s.source}".encode()).hexdigest()
        models.append({"name": s.name, "model": s.name, "size": _size(s),
                       "modified_at": datetime.fromtimestamp(s.created, timezone.utc).isoformat(),
                       "digest": digest, "details": _details(s)})
    return {"models": models}


def _size(served) -> int:
    from pathlib import Path

    source = str(served.obj.config.get("source", served.source)) if served.kind == "llm" else served.source
    path = Path(source)
    if path.is_file():
        return path.stat().st_size
    from firstepoch.llm.models import BUNDLED, bundled_path

    if source in BUNDLED and (p := bundled_path(source)):
        return p.stat().st_size
    return 0


@router.post("/show")
async def show(request: Request):
    body = await read_json(request)
    served = _served(request, body, ("llm", "embedder"))
    capabilities = ["completion"] if served.kind == "llm" else ["embedding"]
    template = ""
    if served.kind == "llm" and served.obj.chat_template is not None:
        template = served.obj.chat_template.source or ""
    info = {"general.architecture": _details(served)["family"]}
    if served.kind == "llm":
        info[f"{_details(served)['family']}.context_length"] = served.obj.context
    return {"modelfile": f"FROM {served.source}\n", "parameters": "", "template": template,
            "details": _details(served), "model_info": info, "capabilities": capabilities,
            "modified_at": datetime.fromtimestamp(served.created, timezone.utc).isoformat()}


def _served(request: Request, body: dict, kinds: tuple[str, ...]):
    name = field(body, "model", str, required=True)
    served = _state(request).registry.get(name, kinds)
    if served is None:
        raise ApiError(404, f"model '{name}' not found")
    return served


def _format(body: dict) -> dict | None:
    """Ollama's `format`: "json" for any JSON object, or a JSON schema the output must follow."""
    from firstepoch.llm.structured import ANY_OBJECT

    spec = field(body, "format", (str, dict), None)
    if spec is None or spec == "":
        return None
    if spec == "json":
        return ANY_OBJECT
    if isinstance(spec, str):
        raise ApiError(400, f"'format' must be \"json\" or a JSON schema object, not {spec[:40]!r}", param="format")
    return spec


def _options(body: dict) -> tuple[dict, int | None, int | None]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'options' must be an object")
    sampling = checked_sampling({"temperature": field(options, "temperature", float, 0.8, low=0.0, high=2.0),
                                 "top_k": field(options, "top_k", int, 40, low=0) or None,
                                 "top_p": field(options, "top_p", float, 0.9, low=0.0, high=1.0),
                                 "min_p": field(options, "min_p", float, None, low=0.0, high=1.0),
                                 "repetition_penalty": field(options, "repeat_penalty", float, 1.1, low=0.01,
                                                             high=100.0),
                                 "seed": seed(options), "stop": stop_list(options), "json_schema": _format(body)})
    num_predict = field(options, "num_predict", int, None, low=-2, high=1 << 24)
    num_ctx = field(options, "num_ctx", int, None, low=1, high=1 << 24)  # at most the context the model was loaded with
    return sampling, (None if num_predict is None or num_predict < 0 else max(1, num_predict)), num_ctx


@router.post("/generate")
async def generate(request: Request):
    body = await read_json(request)
    served = _served(request, body, ("llm",))
    prompt = field(body, "prompt", str, "")
    if not prompt:  # Ollama loads the model and answers with nothing
        return {"model": served.name, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
    sampling, num_predict, num_ctx = _options(body)
    lm = served.obj
    system = field(body, "system", str, None)
    if field(body, "raw", bool, False):
        ids, max_new = prompt_ids(lm, prompt, False, num_predict, DEFAULT_NUM_PREDICT, num_ctx)
    else:  # as Ollama does: the prompt goes through the model's template as one user turn
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids, max_new = await chat_prompt(lm, messages, num_predict, DEFAULT_NUM_PREDICT, num_ctx)
    return await _respond(request, served, ids, max_new, sampling, field(body, "stream", bool, True),
                          lambda piece: {"response": piece})


@router.post("/chat")
async def chat(request: Request):
    body = await read_json(request)
    served = _served(request, body, ("llm",))
    messages = field(body, "messages", list, required=True)
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") or \
                not isinstance(m.get("content") or "", str):
            raise ApiError(400, f"messages[{i}] needs a role (system, user or assistant) and string content")
        clean.append({"role": m["role"], "content": m.get("content") or "",
                      **{k: m[k] for k in ("tool_calls", "tool_name") if m.get(k)}})  # see llm.tools
    if not clean:
        return {"model": served.name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                "done": True, "done_reason": "load"}
    sampling, num_predict, num_ctx = _options(body)
    tools, syntax, listed = _tools(body), None, None
    if tools is not None:  # in the template's own tool-call syntax, else the JSON one any template carries
        from firstepoch.llm.tools import syntax_for

        syntax = await anyio.to_thread.run_sync(syntax_for, served.obj)  # may compile the template
        try:
            clean, listed, options = syntax.prepare(clean, tools, False)
        except FirstEpochError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        sampling.update(options)
    ids, max_new = await chat_prompt(served.obj, clean, num_predict, DEFAULT_NUM_PREDICT, num_ctx, tools=listed)
    return await _respond(request, served, ids, max_new, sampling, field(body, "stream", bool, True),
                          lambda piece: {"message": {"role": "assistant", "content": piece}}, syntax)


def _tools(body: dict):
    from firstepoch.llm.tools import read_tools

    if not body.get("tools"):
        return None
    if body.get("format"):
        raise ApiError(400, "tools and a format cannot be combined: send one of them", param="format")
    try:
        return read_tools(body["tools"])
    except FirstEpochError as exc:
        raise ApiError(400, str(exc), param="tools") from None


def _tool_message(text: str, syntax) -> dict:
    """A tool-using answer as Ollama's message: its tool calls (arguments as objects), or its reply."""
    reply, calls = syntax.read(text)
    if not calls:
        return {"message": {"role": "assistant", "content": reply}}
    return {"message": {"role": "assistant", "content": reply or "", "tool_calls": [
        {"function": {"name": c.name, "arguments": c.arguments}} for c in calls]}}


async def _respond(request, served, ids, max_new, sampling, stream: bool, shape, tools=None):
    state = _state(request)
    started = time.perf_counter_ns()
    generation = await start_generation(served, ids, max_new, sampling)  # this request's own text and stats

    def final(text: str) -> dict:
        s = generation.stats
        reason = s.finish_reason
        return {"model": served.name, "created_at": _now(), **shape(text), "done": True,
                "done_reason": reason if reason in ("stop", "length") else "length",
                "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
                "prompt_eval_count": s.prompt_tokens, "prompt_eval_duration": int(s.prompt_seconds * 1e9),
                "eval_count": s.completion_tokens, "eval_duration": int(s.decode_seconds * 1e9)}

    if tools:  # the answer is read whole: its calls or its words (none left for the last line)
        shape = functools.partial(_tool_message, syntax=tools)
    if not stream:
        text = await generated_text(request, served, generation, state)
        return final(text) if text is not None else Response(status_code=499)  # None: the client has gone

    reservation = served.slot.reserve()  # a full queue is a 503 before any byte is sent

    async def lines():
        async with reservation:
            pieces = []
            async for piece in stream_generation(served, generation, state):
                if tools:  # sent as one message once whole
                    pieces.append(piece)
                    continue
                yield json.dumps({"model": served.name, "created_at": _now(), **shape(piece), "done": False},
                                 ensure_ascii=False) + "\n"
            if tools:
                yield json.dumps({"model": served.name, "created_at": _now(), **shape("".join(pieces)),
                                  "done": False}, ensure_ascii=False) + "\n"
            yield json.dumps(final(""), ensure_ascii=False) + "\n"

    return ReservedStream(lines(), reservation, media_type="application/x-ndjson")


@router.post("/embed")
async def embed(request: Request):
    body = await read_json(request)
    served = _served(request, body, ("embedder",))
    texts = text_list(body)
    started = time.perf_counter_ns()
    async with served.slot:
        vectors = await served.slot.run(served.obj.embed, texts)
    return {"model": served.name, "embeddings": [[float(x) for x in v] for v in vectors],
            "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
            "prompt_eval_count": sum(served.obj.count_tokens(texts)) + 2 * len(texts)}
