"""firstepoch's own routes: predictions from bundles, search and answers from indexes, training runs, health
and metrics. No route builds a file path from what a request says: names are looked up in the registry
or in the list of runs, and uploads go to a private temporary folder that is removed afterwards."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from firstepoch.errors import FirstEpochError
from firstepoch.serve.errors import ApiError, field, read_json

router = APIRouter()
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".pdf", ".tif", ".tiff"}


def _state(request: Request):
    return request.app.state.firstepoch


@router.get("/health")
async def health(request: Request):
    state = _state(request)
    return {"status": "shutting down" if state.stopping() else "ok",
            "models": {s.name: {"kind": s.kind, "busy": s.slot.lock.locked(), "queued": s.slot.waiting}
                       for s in state.registry.items.values()}}


@router.get("/metrics")
async def metrics(request: Request):
    """Prometheus text format."""
    state = _state(request)
    m = state.metrics
    lines = ["# TYPE firstepoch_requests_total counter"]
    lines += [f'firstepoch_requests_total{{route="{route}",status="{status}"}} {n}'
              for (route, status), n in sorted(m.requests.items())]
    lines += ["# TYPE firstepoch_queue_depth gauge"]
    lines += [f'firstepoch_queue_depth{{model="{s.name}"}} {s.slot.waiting}' for s in state.registry.items.values()]
    lines += ["# TYPE firstepoch_busy gauge"]
    lines += [f'firstepoch_busy{{model="{s.name}"}} {int(s.slot.lock.locked())}' for s in state.registry.items.values()]
    rate = m.completion_tokens / m.decode_seconds if m.decode_seconds else 0.0
    lines += [f"firstepoch_prompt_tokens_total {m.prompt_tokens}",
              f"firstepoch_completion_tokens_total {m.completion_tokens}",
              f"firstepoch_decode_tokens_per_second {rate:.2f}",
              f"firstepoch_decode_seconds_total {m.decode_seconds:.3f}",
              f"firstepoch_prompt_seconds_total {m.prompt_seconds:.3f}",
              f"firstepoch_cancelled_generations_total {m.cancelled}",
              f"firstepoch_rejected_busy_total {m.rejected_busy}",
              f"firstepoch_uptime_seconds {time.time() - m.started:.0f}"]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


# ------------------------------------------------------------------------------------------ predict


@router.post("/v1/predict/{name}")
async def predict(name: str, request: Request):
    state = _state(request)
    served = state.registry.get(name, ("classifier", "regressor"))
    if served is None:
        known = ", ".join(s.name for s in state.registry.of_kind("classifier", "regressor")) or "none"
        raise ApiError(404, f"model {name!r} is not served here (predict models: {known})", code="model_not_found")
    predictor = served.obj
    takes_images = predictor.preprocessor.takes_files
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not takes_images:
            raise ApiError(400, f"model {name!r} takes a JSON row, not a file upload")
        item = await _upload(request, state.limits.max_upload_bytes)
        try:
            async with served.slot:
                result = await served.slot.run(_predict_file, predictor, item)
        finally:
            shutil.rmtree(item.parent, ignore_errors=True)
    else:
        body = await read_json(request)
        row = field(body, "row", dict, body if "row" not in body else None)
        if takes_images:
            raise ApiError(400, f"model {name!r} takes an image or PDF upload (multipart field 'file')")
        async with served.slot:
            result = await served.slot.run(_predict_row, predictor, row)
    return {"model": served.name, **result}


async def _upload(request: Request, limit: int) -> Path:
    form = await request.form(max_files=1, max_fields=4)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "send the image or PDF as a multipart file field named 'file'")
    suffix = Path(upload.filename or "").suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ApiError(400, f"upload type {suffix or '(none)'} is not supported; send one of "
                            f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    data = await upload.read(limit + 1)
    await upload.close()
    if len(data) > limit:
        raise ApiError(413, f"the upload is over the {limit // (1 << 20)} MB limit")
    folder = Path(tempfile.mkdtemp(prefix="firstepoch-upload-"))  # private (0700), removed by the caller
    path = folder / f"upload{suffix}"  # our own name: nothing of the client's name reaches the file system
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def _predict_file(predictor, path: Path) -> dict:
    try:
        return predictor.predict(path)
    except FirstEpochError as exc:
        raise ApiError(400, str(exc).replace(str(path), "the upload")) from None
    except Exception as exc:  # Pillow/pdfium on a file that is not what its name says
        raise ApiError(400, f"the upload could not be read as an image or PDF ({type(exc).__name__})") from None


def _predict_row(predictor, row: dict) -> dict:
    try:
        return predictor.predict(row)
    except FirstEpochError as exc:
        raise ApiError(400, str(exc)) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ApiError(400, f"the row does not fit the model's columns ({exc})") from None


# ------------------------------------------------------------------------------------------ documents


def _index(request: Request, name: str):
    served = _state(request).registry.get(name, ("index",))
    if served is None:
        known = ", ".join(s.name for s in _state(request).registry.of_kind("index")) or "none"
        raise ApiError(404, f"index {name!r} is not served here (indexes: {known})")
    return served


@router.post("/v1/search/{name}")
async def search(name: str, request: Request):
    served = _index(request, name)
    body = await read_json(request)
    query = field(body, "query", str, required=True)
    k = field(body, "k", int, 5, low=1, high=100)
    mode = field(body, "mode", str, "hybrid")
    async with served.slot:
        try:
            hits = await served.slot.run(lambda: served.obj.search(query, k=k, mode=mode))
        except FirstEpochError as exc:
            raise ApiError(400, str(exc)) from None
    return {"index": served.name, "results": [
        {"rank": r + 1, "id": h.id, "score": round(h.score, 4), "source": h.source, "page": h.page,
         "section": h.section, "start": h.start, "end": h.end, "text": h.text} for r, h in enumerate(hits)]}


@router.get("/v1/page/{name}/{chunk}")
async def page_image(name: str, chunk: int, request: Request, width: int = 900):
    """The PDF page a passage (search result or citation `id`) is on, as a PNG with the passage highlighted."""
    from firstepoch.retrieval.pdf import page_image as render

    served = _index(request, name)
    if not 100 <= width <= 2000:
        raise ApiError(400, f"'width' must be between 100 and 2000 pixels, not {width}", param="width")
    async with served.slot:
        hit = await served.slot.run(lambda: served.obj.chunk(chunk))
        if hit is None:
            raise ApiError(404, f"index {name!r} has no passage {chunk}")
        if not hit.page or not hit.path.lower().endswith(".pdf"):
            raise ApiError(404, f"passage {chunk} is from {hit.source}, which is not a PDF: it has no page image")
        try:
            png = await served.slot.run(lambda: render(hit.path, hit.page, hit.text, width))
        except FirstEpochError as exc:
            raise ApiError(404, str(exc)) from None
        except Exception as exc:  # pdfium's own errors: the file changed or went since it was indexed
            raise ApiError(404, f"{hit.source}: page {hit.page} cannot be drawn ({exc}); index it again") from None
    return Response(png, media_type="image/png")


@router.post("/v1/ask/{name}")
async def ask(name: str, request: Request):
    """Streamed as NDJSON: first {"citations": [...]}, then {"text": piece} lines, then {"done": true}."""
    from firstepoch.retrieval.rag import ANSWER_SAMPLING, ANSWER_TOKENS, supported
    from firstepoch.serve.streaming import ReservedStream, generated_text, start_generation, stream_generation

    state = _state(request)
    served = _index(request, name)
    body = await read_json(request)
    question = field(body, "question", str, required=True)
    k = field(body, "k", int, 5, low=1, high=20)
    model_name = field(body, "model", str, None)
    llms = state.registry.of_kind("llm")
    llm = state.registry.get(model_name, ("llm",)) if model_name else (llms[0] if llms else None)
    if llm is None:
        raise ApiError(404 if model_name else 400, f"language model {model_name!r} is not served here" if model_name
                       else "no language model is served to answer with; start the server with one")
    stream = field(body, "stream", bool, True)
    async with served.slot:
        hits = await served.slot.run(lambda: served.obj.search(question, k=k))
    async with served.slot:  # the quote embeds the passages' sentences with the index's embedder
        plan = await served.slot.run(lambda: _answer_plan(hits, question, llm.obj, served.obj.embedder.embed))
    citations = [c.to_json() for c in plan.citations]
    quote = plan.quote.to_json() if plan.quote else None
    if not stream:
        text = plan.refusal
        if text is None:
            generation = await start_generation(llm, plan.prompt_ids, ANSWER_TOKENS, ANSWER_SAMPLING)
            text = await generated_text(request, llm, generation, state)
            if text is None:  # the client has gone
                return Response(status_code=499)
        return {"index": served.name, "answer": text, "answered": plan.refusal is None, "citations": citations,
                "quote": quote, "supported": plan.refusal is None and supported(text, plan.citations)}
    reservation = llm.slot.reserve() if plan.refusal is None else None  # a full queue: a 503 before any byte

    async def lines():
        yield json.dumps({"citations": citations, "answered": plan.refusal is None, "quote": quote}) + "\n"
        if plan.refusal is not None:
            yield json.dumps({"text": plan.refusal}) + "\n"
            yield json.dumps({"done": True}) + "\n"
            return
        text = ""
        async with reservation:
            generation = await start_generation(llm, plan.prompt_ids, ANSWER_TOKENS, ANSWER_SAMPLING)
            async for piece in stream_generation(llm, generation, state):
                text += piece
                yield json.dumps({"text": piece}, ensure_ascii=False) + "\n"
        yield json.dumps({"done": True, "supported": supported(text, plan.citations)}) + "\n"

    if reservation is None:
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    return ReservedStream(lines(), reservation, media_type="application/x-ndjson")


def _answer_plan(hits, question: str, lm, embed):
    """`rag.plan_answer`, with a template that refuses or runs past its bounds as a 400."""
    from firstepoch.retrieval.rag import plan_answer

    try:
        return plan_answer(lm, question, hits, embed=embed)
    except FirstEpochError as exc:
        raise ApiError(400, str(exc)) from None


# ------------------------------------------------------------------------------------------ runs


@router.get("/v1/runs")
async def runs(request: Request):
    from firstepoch.core.runs import list_runs

    return {"runs": [{"name": r.get("name"), "task": r.get("task"), "status": r.get("status"),
                      "epochs_done": r.get("epochs_done", 0), "best": r.get("best")} for r in list_runs()]}


@router.get("/v1/runs/{name}")
async def run_metrics(name: str, request: Request):
    from firstepoch.core.runs import Run, list_runs

    found = [r for r in list_runs() if r.get("name") == name]  # looked up by name, never joined into a path
    if not found:
        raise ApiError(404, f"no run named {name!r}")
    return {"name": name, "task": found[0].get("task"), "history": Run(Path(found[0]["path"])).history()}
