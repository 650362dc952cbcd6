"""Errors the server answers with: OpenAI's shape under /v1, Ollama's under /api, never a 500 for bad input."""
from __future__ import annotations

import json
import math

from starlette.requests import Request
from starlette.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error", 503: "server_busy",
          504: "timeout"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def error_response(request: Request | None, status: int, message: str, code: str | None = None,
                   param: str | None = None, headers: dict | None = None) -> JSONResponse:
    path = request.url.path if request is not None else ""
    if path.startswith("/api/"):
        body = {"error": message}  # Ollama's shape
    else:
        body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                          "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_json(request: Request) -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong with it: not JSON, nested too deep,
    a number too long to read, or a string that is not text (a lone UTF-16 surrogate such as "\\ud800")."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise ApiError(400, f"the request body is not valid JSON ({str(exc)[:160]})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_text(body)
    return body


def _check_text(body: dict) -> None:
    """Every string in the body (keys too) must encode as UTF-8: a lone surrogate would fail deep in a tokenizer."""
    todo = [(body, "")]
    while todo:
        value, where = todo.pop()
        if isinstance(value, dict):
            todo += [(k, where) for k in value] + [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            todo += [(v, f"{where}[{i}]") for i, v in enumerate(value)]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, f"'{where or 'body'}' holds a lone UTF-16 surrogate, which is not text; "
                                    f"send valid Unicode", param=where or None) from None


def field(body: dict, name: str, kind, default=None, required: bool = False, low=None, high=None):
    """body[name] checked against `kind` (a type or a tuple of types) and an optional range."""
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, f"'{name}' is required", param=name)
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ApiError(400, f"'{name}' must be {names}, not {type(value).__name__}", param=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number, not {value}", param=name)
    if low is not None and value < low or high is not None and value > high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, not {str(value)[:40]}", param=name)
    return value


def text_list(body: dict, name: str = "input", most: int = 2048) -> list[str]:
    """body[name] as a list of texts (one string or a list of them), for the embedding routes."""
    texts = body.get(name)
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"'{name}' must be a string or a non-empty list of strings (token arrays are not "
                            f"supported)", param=name)
    if len(texts) > most:
        raise ApiError(400, f"'{name}' has {len(texts)} texts; send at most {most} at a time", param=name)
    return texts


MAX_STOPS, MAX_STOP_CHARS = 16, 500  # llama.cpp's server sets no bound; a stop string's cost grows with its length


def stop_list(body: dict, name: str = "stop") -> list[str]:
    stop = body.get(name)
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, f"'{name}' must be a string or a list of strings", param=name)
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"'{name}': at most {MAX_STOPS} stop strings of at most {MAX_STOP_CHARS} characters",
                       param=name)
    return [s for s in stops if s]


def seed(body: dict, name: str = "seed") -> int | None:
    """A sampling seed: any 64-bit integer; a negative one (Ollama's -1) means a random seed, as in llama.cpp."""
    value = field(body, name, int, None, low=-(2**63), high=2**64 - 1)
    return None if value is None or value < 0 else value
