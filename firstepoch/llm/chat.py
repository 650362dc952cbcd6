"""Chat templates: the model's own Jinja template (`tokenizer.chat_template`), rendered in a sandbox process.

As in the reference implementations, the template sees `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception` and `strftime_now`. A model without a template, or with one that does not
compile, gets a loud warning and a plain "role: content" layout, never a silent guess.

Templates come inside model files people download, so they are hostile input: a loop of 10**10 steps, or
`'{0:>3000000000}'.format('x')`, must not freeze or kill the program. Jinja's sandbox stops attribute tricks
but not time or memory, so templates compile and render in a small long-lived child process
(`chat_sandbox.py`, one for each template in use, started at its first chat) under a memory limit; a render
that runs past its time limit gets the process killed (a fresh one starts at the next render) and a `FirstEpochError`.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict

from firstepoch.errors import FirstEpochError
from firstepoch.llm import chat_sandbox

RENDER_TIMEOUT = 2.0  # seconds a template may compile or render before its process is killed
MAX_OUTPUT_CHARS = 8_000_000  # characters a rendered prompt may have: far more than any model's context holds
MEMORY_LIMIT = 512 << 20  # bytes of address space for the sandbox process (Linux; macOS enforces none)
STARTUP_TIMEOUT = 30.0  # seconds for the sandbox process to say it is ready, even on a busy machine

FALLBACK = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")

_FIX = "if the model's template is broken, give a working one with --chat-template FILE"


# the templates of model families whose GGUF files often come without one, by the turn tokens that tell them:
# (marker token, family, Jinja template); a file's own template always comes first
KNOWN_TEMPLATES = [
    ("<start_of_turn>", "gemma",  # Gemma's turns; a system message goes at the top of the first user turn
     "{{ bos_token }}"
     "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' -%}"
     "{%- for m in messages if m['role'] != 'system' -%}"
     "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
     "{{ system + '\n\n' if system and loop.first else '' }}{{ m['content'] | trim }}<end_of_turn>\n"
     "{% endfor -%}"
     "{%- if add_generation_prompt %}<start_of_turn>model\n{% endif -%}"),
    ("<|im_start|>", "chatml",
     "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
]


def known_template(tokenizer) -> tuple[str, str] | None:
    """(template, origin) of the first family in `KNOWN_TEMPLATES` whose marker is one of the tokenizer's
    tokens, or None."""
    for marker, family, template in KNOWN_TEMPLATES:
        if tokenizer.token_id(marker) is not None:
            return template, f"firstepoch's {family} chat template (the file has none)"
    return None


class ChatTemplate:
    """`render(messages)` -> the prompt text (with control tokens) that the model was fine-tuned on.

    Args:
        source: the Jinja template, or None when the model has none (then the plain layout, with a warning).
        tokenizer: gives `bos_token`/`eos_token` (`bos_id`, `eos_id`, `token_text`); None for none.
        origin: where the template comes from (a file name), for warnings and errors.
        timeout: seconds one render may take before it is stopped with a `FirstEpochError`.
        max_chars: the longest prompt a render may produce before it is stopped with a `FirstEpochError`.
    """

    def __init__(self, source: str | None, tokenizer, origin: str = "model", timeout: float = RENDER_TIMEOUT,
                 max_chars: int = MAX_OUTPUT_CHARS):
        self.tokenizer, self.origin, self.source = tokenizer, origin, source
        self.timeout, self.max_chars = timeout, max_chars
        self._lock = threading.Lock()
        self._fallback, self._checked = not source, not source
        if not source:
            self._warn("it has no chat template", stacklevel=3)

    @property
    def fallback(self) -> bool:
        """True when chat uses the plain 'role: content' layout: no template, or one that does not compile."""
        self._check()
        return self._fallback

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        """The prompt for `messages` (and OpenAI-style `tools`, for a template that describes them itself); a
        `FirstEpochError` if the template refuses them, fails, or passes the time limit (`timeout`), the size limit
        (`max_chars`) or the memory limit (`MEMORY_LIMIT`)."""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise FirstEpochError(f"message {i}: each message needs a 'role' and a 'content' string")
        self._check()
        tok = self.tokenizer
        bos_id, eos_id = (tok.bos_id, tok.eos_id) if tok is not None else (None, None)  # None: a GPT of your own
        context = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                   "bos_token": tok.token_text(bos_id) if bos_id is not None else "",
                   "eos_token": tok.token_text(eos_id) if eos_id is not None else ""}
        if tools is not None:
            context["tools"] = tools
        source = FALLBACK if self._fallback else self.source
        reply = _sandbox_for(source).request({"source": source, "context": context, "max_chars": self.max_chars},
                                             self.timeout)
        if "text" in reply:
            return reply["text"]
        if reply["error"] == "refused":
            raise FirstEpochError(f"the chat template refused the messages: {reply['message']}")
        if reply["error"] in ("failed", "syntax"):
            raise FirstEpochError(f"{self.origin}: the chat template failed on these messages ({reply['message']})")
        raise FirstEpochError(f"{self.origin}: the chat template {self._stopped_because(reply)} and was stopped; "
                              f"{_FIX}")

    def _check(self) -> None:
        """Compile the template once (in the sandbox: Jinja evaluates constant expressions while compiling);
        one that does not compile warns and falls back to the plain layout."""
        with self._lock:
            if self._checked:
                return
            reply = _sandbox_for(self.source).request({"source": self.source}, self.timeout)
            if "error" in reply:
                why = reply["message"] if reply["error"] == "syntax" else self._stopped_because(reply)
                self._warn(f"its chat template does not parse ({why})", stacklevel=4)
                self._fallback = True
            self._checked = True

    def _stopped_because(self, reply: dict) -> str:
        return {"timeout": f"ran past its {self.timeout:g} s time limit",
                "too_long": f"produced more than {self.max_chars:,} characters (the limit)",
                "memory": f"ran out of memory (the limit is {MEMORY_LIMIT >> 20} MiB)",
                }.get(reply["error"], f"crashed its sandbox process ({reply.get('message', '')})")

    def _warn(self, why: str, stacklevel: int) -> None:
        warnings.warn(f"{self.origin}: {why}; chat uses a plain 'role: content' layout and answers will be worse; "
                      f"give the model's template with --chat-template FILE", stacklevel=stacklevel)


class _Sandbox:
    """The one long-lived `chat_sandbox.py` process that all templates share; a lock serialises requests."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._replies: queue.Queue | None = None  # lines from the process, None at its end (a reader thread's)
        self._inline = None  # (environment, cache) where no child Python can be started (a frozen app)
        atexit.register(self.close)
        if hasattr(os, "register_at_fork"):  # a forked child must not talk to (or kill) its parent's process
            os.register_at_fork(after_in_child=self._forget)

    def request(self, message: dict, timeout: float) -> dict:
        """Send one request and wait at most `timeout` seconds for the reply. A process that does not answer in
        time is killed and the reply is {"error": "timeout"}; one that dies gives {"error": "died"}."""
        try:  # default=str: what a template would print of an object that JSON cannot carry
            line = json.dumps(message, default=str).encode() + b"\n"
        except (TypeError, ValueError) as exc:  # a message that contains itself, keys that are not strings
            raise FirstEpochError(f"the messages cannot be passed to the chat template ({exc})") from exc
        with self._lock:
            if not self._send(line):  # in-process: no child Python here
                return chat_sandbox.answer(message, self._inline[1], self._inline[0])
            try:
                answer = self._replies.get(timeout=timeout)
            except queue.Empty:
                self._stop()
                return {"error": "timeout"}
            except BaseException:  # Ctrl-C while waiting: its reply would answer the next request
                self._stop()
                raise
            if answer is None:
                return {"error": "died", "message": f"exit code {self._stop()}"}
            return json.loads(answer)

    def close(self) -> None:
        """Stop the process (at exit); a later request starts a fresh one."""
        process, self._process = self._process, None
        if process is not None:
            _kill(process)

    def _send(self, line: bytes) -> bool:
        """Write one request line, starting the process if needed; False where templates run in-process."""
        for _ in range(2):
            if self._process is not None and self._process.poll() is not None:
                self._stop()  # it died while idle (killed from outside)
            if self._process is None and self._inline is None:
                self._start()
            if self._inline is not None:
                return False
            try:
                self._process.stdin.write(line)
                self._process.stdin.flush()
                return True
            except OSError:  # it died just now: once more with a fresh one
                self._stop()
        raise FirstEpochError("the chat template sandbox process dies as soon as it starts")

    def _start(self) -> None:
        if getattr(sys, "frozen", False) or not sys.executable:
            warnings.warn("this program cannot start a Python process for chat templates; they run in-process, "
                          "without time or memory limits", stacklevel=5)
            self._inline = (chat_sandbox.environment(), {})
            return
        command = [sys.executable, "-I", "-S", chat_sandbox.__file__, str(MEMORY_LIMIT), json.dumps(_jinja_paths())]
        stderr = tempfile.TemporaryFile()  # read only if it fails to start
        try:
            # no LD_PRELOAD: a sanitizer's runtime preloaded into the parent (tests/llm/test_asan.py) cannot start
            # under the child's address-space limit
            env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                       start_new_session=True, env=env)  # the terminal's Ctrl-C is for the parent
        except OSError as exc:
            stderr.close()
            raise FirstEpochError(f"cannot start the chat template sandbox ({sys.executable}: {exc})") from exc
        replies: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(process.stdout, replies), daemon=True,
                         name="chat-template-sandbox").start()
        try:
            ready = replies.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            ready = None
        if ready is None:
            _kill(process)
            stderr.seek(0)
            last = (stderr.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            stderr.close()
            raise FirstEpochError(f"the chat template sandbox process did not start ({last})")
        stderr.close()
        self._process, self._replies = process, replies

    def _stop(self) -> int:
        process, self._process = self._process, None
        return _kill(process)

    def _forget(self) -> None:
        self._lock, self._process, self._replies = threading.Lock(), None, None


def _kill(process: subprocess.Popen) -> int:
    """Kill and reap (no zombie) a sandbox process; its exit code."""
    if process.poll() is None:
        process.kill()
    try:
        process.stdin.close()
    except OSError:
        pass
    return process.wait()  # its stdout is the reader thread's to close


def _read_lines(stream, replies: queue.Queue) -> None:
    try:
        with stream:
            for line in stream:
                replies.put(line)
    finally:
        replies.put(None)


def _jinja_paths() -> list[str]:
    """The folders holding jinja2 and markupsafe: the sandbox process starts without site-packages (-S)."""
    paths = []
    for name in ("jinja2", "markupsafe"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise FirstEpochError(f"chat templates need the {name} package: pip install jinja2")
        folder = os.path.dirname(os.path.dirname(spec.origin))
        if folder not in paths:
            paths.append(folder)
    return paths


# a process for each template in use, so that one which always runs out of time delays only its own model's chats
MAX_SANDBOXES = 4
_SANDBOXES: OrderedDict[str, _Sandbox] = OrderedDict()  # by the template's hash, the most recently used last
_SANDBOXES_LOCK = threading.Lock()


def _sandbox_for(source: str) -> _Sandbox:
    """The sandbox process that renders `source`; past `MAX_SANDBOXES` the least recently used one is closed."""
    key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
    with _SANDBOXES_LOCK:
        sandbox = _SANDBOXES.pop(key, None) or _Sandbox()
        _SANDBOXES[key] = sandbox
        while len(_SANDBOXES) > MAX_SANDBOXES:
            _SANDBOXES.popitem(last=False)[1].close()
        return sandbox
