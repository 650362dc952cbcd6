"""The chat-template sandbox process: compiles and renders Jinja chat templates under a memory limit.

Chat templates come inside model files that people download, so `chat.py` runs them here, in a small
child process (`python -I -S chat_sandbox.py MEMORY_LIMIT PATHS`) that the parent kills when a render
runs past its time limit. Even compiling is template code: Jinja folds constant expressions such as
`{{ 'x' * 10**10 }}` or `{{ 'x'|center(10**9) }}` at compile time. This file imports only jinja2 and
the standard library, never firstepoch (whose package would import torch).

Protocol, one JSON object a line. The process says `{"ready": true, "memory_limit": BYTES or null}`,
then answers each request `{"source", "context"?, "max_chars"}` with `{"text"}` or
`{"error": KIND, "message"}`. Without "context" a request only compiles. It exits when its
stdin closes or its parent goes away.
"""
import json
import os
import signal
import sys
import threading
import time

MAX_MESSAGE_CHARS = 500  # of an error message sent back: raise_exception(huge) must not come back huge
_CACHE_SIZE = 32  # compiled templates kept, by source


class TemplateRefusal(Exception):
    """`raise_exception(message)` from inside a template: the template refuses these messages."""


class OutputTooLong(Exception):
    """The template's output passed `max_chars`."""


def _raise(message):
    raise TemplateRefusal(str(message))


def environment():
    """The sandboxed Jinja environment with the globals chat templates expect."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env


def render(template, context: dict, max_chars: int) -> str:
    """`template.render(**context)`, stopped as soon as the output passes `max_chars` characters."""
    pieces, size = [], 0
    for piece in template.generate(**context):
        size += len(piece)
        if size > max_chars:
            raise OutputTooLong()
        pieces.append(piece)
    return "".join(pieces)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def answer(request: dict, cache: dict, env) -> dict:
    """One request -> its reply (never raises for anything a template does)."""
    source = request["source"]
    try:
        template = cache.get(source)
        if template is None:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            template = cache[source] = env.from_string(source)
    except MemoryError:
        return {"error": "syntax", "message": "it ran out of memory while compiling"}
    except Exception as exc:  # TemplateSyntaxError, TemplateAssertionError (unknown filter), RecursionError...
        return {"error": "syntax", "message": _one_line(exc)}
    if "context" not in request:
        return {"text": ""}
    try:
        return {"text": render(template, request["context"], request["max_chars"])}
    except OutputTooLong:
        return {"error": "too_long", "message": ""}
    except MemoryError:
        return {"error": "memory", "message": ""}
    except TemplateRefusal as exc:
        return {"error": "refused", "message": _one_line(exc)}
    except Exception as exc:  # SecurityError, UndefinedError, TypeError, RecursionError...
        return {"error": "failed", "message": _one_line(exc)}


def _limit_memory(limit: int):
    """Cap this process's address space; the cap in bytes, or None where the OS enforces none."""
    if sys.platform == "darwin":  # macOS accepts RLIMIT_AS and ignores it: the parent's time limit is the bound
        return None
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, AttributeError, ValueError, OSError):  # Windows has no resource module
        return None
    return limit


def _exit_when_orphaned(parent: int) -> None:
    """A parent killed mid-render cannot close our stdin while we loop: notice it from a thread instead."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def main(argv: list[str]) -> None:
    memory_limit, paths = int(argv[1]), json.loads(argv[2])
    sys.path[:0] = paths
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; it stops us if it must
    env = environment()
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    out = sys.stdout.buffer
    out.write(json.dumps({"ready": True, "memory_limit": _limit_memory(memory_limit)}).encode() + b"\n")
    out.flush()
    cache: dict = {}
    for line in sys.stdin.buffer:
        out.write(json.dumps(answer(json.loads(line), cache, env)).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv)
