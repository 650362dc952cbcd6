"""`firstepoch serve`: one FastAPI app with OpenAI- and Ollama-compatible APIs, model endpoints and a web page.

    app = create_app(load_registry(["smollm2-135m-instruct", "all-minilm-l6-v2"], ["notes"]))
    serve(app, host="127.0.0.1", port=8000)
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse

from firstepoch.errors import FirstEpochError
from firstepoch.serve.errors import ApiError, error_response
from firstepoch.serve.registry import Busy, Registry
from firstepoch.serve.streaming import Limits, Metrics

OPEN_PATHS = {"/", "/favicon.ico"}  # the page itself holds no data; it asks for the key when one is set


@dataclass
class ServerState:
    registry: Registry
    limits: Limits
    api_key: str | None = None
    metrics: Metrics = field(default_factory=Metrics)
    stopping: Callable[[], bool] = lambda: False


class _BodyLimit:
    """Pure ASGI middleware: a body over the limit is a 413, whether it says its length or streams it."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["path"].startswith("/v1/predict/")
        limit = self.limits.max_upload_bytes + (64 << 10) if upload else self.limits.max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_413(scope, send, limit)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _send_413(scope, send, limit)


class _Guard:
    """Pure ASGI middleware (so streams and disconnects pass straight through): the API key on every route
    but the page, and the request counts of /metrics."""

    def __init__(self, app, state: ServerState, known: set[str]):
        self.app, self.state, self.known = app, state, known

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request as StarletteRequest

        request = StarletteRequest(scope)
        route = _route_name(scope["path"], self.known)
        key = self.state.api_key
        if key and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):  # constant time
                self.state.metrics.count(route, 401)
                response = error_response(request, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                          code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.state.metrics.count(route, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSPECIFIED = ("0.0.0.0", "::", "")  # bound to every interface: the names it is reached by are not known


def allowed_hosts(host: str, extra: list[str] | None = None) -> set[str] | None:
    """The Host names a server bound to `host` answers to: loopback names, `host` itself and `extra`; None (any
    name) when bound to every interface. A browser tricked by DNS rebinding sends the attacker's name."""
    if host in UNSPECIFIED:
        return None
    return {*LOOPBACK_NAMES, host.lower().strip("[]"), *(name.lower() for name in extra or [])}


class _SameOrigin:
    """Pure ASGI middleware against cross-site use of a server on this machine (what llama.cpp's and Ollama's
    servers guard against too): a Host header that is not one of the server's names (DNS rebinding), an
    Origin that is neither the server's own nor given with --cors, and a body a web page can send without
    asking first (text/plain, forms) on the JSON routes."""

    def __init__(self, app, hosts: set[str] | None, origins: list[str]):
        self.app, self.hosts, self.origins = app, hosts, set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers
        from starlette.requests import Request as StarletteRequest

        problem = self._problem(scope, Headers(scope=scope))
        if problem is None:
            return await self.app(scope, receive, send)
        status, message = problem
        return await error_response(StarletteRequest(scope), status, message)(scope, receive, send)

    def _problem(self, scope, headers) -> tuple[int, str] | None:
        host, origin = headers.get("host", ""), headers.get("origin")
        if self.hosts is not None and not _is_allowed_host(_host_name(host), self.hosts):
            return 403, (f"Host {host[:80]!r} is not a name of this server; a server bound to one address answers "
                         f"to its loopback names and that address (--host), and to --allow-host NAME")
        if origin is not None and not self._allowed_origin(origin, host):
            return 403, (f"cross-origin request from {origin[:80]!r} refused; start the server with --cors "
                         f"{origin[:80]} to let that site use it")
        if scope["method"] in ("POST", "PUT", "PATCH") and not _json_body_allowed(scope["path"], headers):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            return 415, (f"Content-Type {kind[:60]!r} is not accepted here; send the JSON body with "
                         f"'Content-Type: application/json'")
        return None

    def _allowed_origin(self, origin: str, host: str) -> bool:
        from urllib.parse import urlsplit

        if "*" in self.origins or origin in self.origins:
            return True
        try:
            return urlsplit(origin).netloc.lower() == host.lower() != ""  # the server's own page
        except ValueError:
            return False


# the types a web page may send to another site without asking it first (CORS "simple" requests)
_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def _json_body_allowed(path: str, headers) -> bool:
    """JSON, no type, an upload to /v1/predict, or a simple type from a tool rather than a browser (curl -d sends
    a form type): browsers send Origin or Sec-Fetch-* headers with every request a page makes."""
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind or kind == "application/json" or kind.endswith("+json"):
        return True
    if kind == "multipart/form-data" and path.startswith("/v1/predict/"):
        return True
    from_a_browser = "origin" in headers or any(name.startswith("sec-fetch-") for name in headers.keys())
    return kind in _SIMPLE_TYPES and not from_a_browser


class _ServerErrors:
    """Pure ASGI middleware: an error of ours (a bug, never bad input) is a 500 in the API's error shape, logged
    once and counted in /metrics like any answer; after a response has started it can only end the connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            import logging

            from starlette.requests import Request as StarletteRequest

            logging.getLogger("firstepoch.serve").exception("error answering %s", scope["path"])
            if started:
                return
            response = error_response(StarletteRequest(scope), 500,
                                      f"internal error ({type(exc).__name__}); see the server's log")
            await response(scope, receive, send)


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'Example.COM.' -> 'example.com'."""
    if host.startswith("["):
        return host[1:host.find("]")].lower() if "]" in host else ""
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).lower().rstrip(".")


def _is_allowed_host(name: str, hosts: set[str]) -> bool:
    import ipaddress

    if name in hosts or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _TooLarge(Exception):
    pass


async def _send_413(scope, send, limit: int):
    from starlette.requests import Request as StarletteRequest

    response = error_response(StarletteRequest(scope), 413, f"the request body is over the {limit:,}-byte limit")
    await response(scope, None, send)


def create_app(registry: Registry, limits: Limits | None = None, api_key: str | None = None,
               cors: list[str] | None = None, stopping: Callable[[], bool] | None = None,
               hosts: set[str] | None = allowed_hosts("127.0.0.1")) -> FastAPI:
    """The server's app: routes for what `registry` holds, checked by `api_key` when given, answering to the
    Host names `hosts` (None: any) and to cross-origin requests from the `cors` origins only."""
    from firstepoch.serve import endpoints, ollama, openai, ui

    limits = limits or Limits(queue_size=registry.queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batched = [s for s in registry.of_kind("llm") if getattr(s.obj, "batcher", None)]
        drivers = [asyncio.create_task(_drive(s)) for s in batched]
        yield
        for task in drivers:
            task.cancel()
        for served in batched:  # no step will come: whoever still waits for a token hears why
            served.obj.batcher.shutdown(FirstEpochError("the server is shutting down"))

    app = FastAPI(title="firstepoch", docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.firstepoch = ServerState(registry, limits, api_key, stopping=stopping or (lambda: False))
    for router in (openai.router, ollama.router, endpoints.router):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(ui.PAGE, headers={"Cache-Control": "no-cache"})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(request, exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        request.app.state.firstepoch.metrics.rejected_busy += 1
        return error_response(request, 503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return error_response(request, exc.status_code, message)

    @app.exception_handler(FirstEpochError)
    async def bad_input(request: Request, exc: FirstEpochError):
        return error_response(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(request, 400, f"{where}: {first.get('msg', 'invalid request')}")

    app.add_middleware(_BodyLimit, limits=limits)
    app.add_middleware(_SameOrigin, hosts=hosts, origins=cors or [])
    app.add_middleware(_ServerErrors)  # inside _Guard: a 500 is counted too
    known = {route.path for router in (openai.router, ollama.router, endpoints.router) for route in router.routes}
    app.add_middleware(_Guard, state=app.state.firstepoch, known=known | OPEN_PATHS)
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors, allow_methods=["*"], allow_headers=["*"])
    return app


def _route_name(path: str, known: set[str]) -> str:
    """The route pattern, not the raw path, so that /metrics has a bounded set of labels."""
    for prefix in ("/v1/predict/", "/v1/search/", "/v1/ask/", "/v1/runs/"):
        if path.startswith(prefix):
            return prefix + "{name}"
    return path if path in known else "other"


async def _drive(served) -> None:
    """A batched model's steps (llm.batch.Batcher), one at a time on the compute thread, for as long as any of
    its requests is running or waiting; between steps the thread is free for the other models' work."""
    batcher, loop, work = served.obj.batcher, asyncio.get_running_loop(), asyncio.Event()
    batcher.on_work = lambda: loop.call_soon_threadsafe(work.set)
    while True:
        await work.wait()
        work.clear()
        while batcher.has_work():
            try:
                await served.slot.run(batcher.step)
            except Exception:  # noqa: BLE001  (a step's own errors go to its requests; this is a bug: go on)
                logging.getLogger("firstepoch").exception("a batched step of %s failed", served.name)


def serve(models: list[str], indexes: list[str], host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, cors: list[str] | None = None, limits: Limits | None = None,
          context: int = 4096, log_level: str = "info", ready: Callable[[str], None] | None = None,
          allow_hosts: list[str] | None = None, parallel: int | None = None, chat_template=None,
          kv_cache: str = "f16") -> None:
    """Load what to serve, then run the server until SIGINT/SIGTERM, which stop new requests and end
    in-flight answers cleanly (their streams close with their usual last message). `parallel`: the requests a
    GGUF model decodes together (None: `llm.batch.auto_parallel` for each); `chat_template`: a Jinja template file
    overriding the chat models' own; `kv_cache`: the GGUF models' KV cache numbers (f16 or q8_0)."""
    import uvicorn

    from firstepoch.serve.registry import load_registry

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        warnings.warn(f"serving on {host} without --api-key: anyone who can reach this port can use the models")
    limits = limits or Limits()
    registry = load_registry(models, indexes, queue_size=limits.queue_size, context=context, parallel=parallel,
                             chat_template=chat_template, kv_cache=kv_cache)
    server: uvicorn.Server | None = None
    app = create_app(registry, limits, api_key, cors, stopping=lambda: bool(server and server.should_exit),
                     hosts=allowed_hosts(host, allow_hosts))
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=15,
                            access_log=log_level == "debug")
    server = uvicorn.Server(config)
    if ready is not None:
        ready(f"http://{host}:{port}")
    server.run()
