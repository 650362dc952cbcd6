"""Chat templates: the model's own Jinja template (`tokenizer.chat_template`), rendered in a sandbox.

As in the reference implementations, the template sees `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `raise_exception` and `strftime_now`. A model without a template, or with one that does not
render, gets a loud warning and a plain "role: content" layout, never a silent guess.
"""
from __future__ import annotations

import time
import warnings

from firstepoch.errors import FirstEpochError

FALLBACK = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")


class ChatTemplate:
    """`render(messages)` -> the prompt text (with control tokens) that the model was fine-tuned on."""

    def __init__(self, source: str | None, tokenizer, origin: str = "model"):
        self.tokenizer, self.origin, self.source = tokenizer, origin, source
        self.fallback = False
        try:
            self._template = _environment().from_string(source) if source else None
        except Exception as exc:  # jinja2.TemplateSyntaxError and friends
            self._warn(f"its chat template does not parse ({exc})")
            self._template = None
        if source is None:
            self._warn("it has no chat template")
        if self._template is None:
            self._template, self.fallback = _environment().from_string(FALLBACK), True

    def _warn(self, why: str) -> None:
        warnings.warn(f"{self.origin}: {why}; chat uses a plain 'role: content' layout and answers will be worse; "
                      f"give the model's template with --chat-template FILE", stacklevel=3)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise FirstEpochError(f"message {i}: each message needs a 'role' and a 'content' string")
        tok = self.tokenizer
        bos_id, eos_id = getattr(tok, "bos_id", None), getattr(tok, "eos_id", None)  # a GPT of your own has none
        bos = tok.token_text(bos_id) if bos_id is not None else ""
        eos = tok.token_text(eos_id) if eos_id is not None else ""
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=bos, eos_token=eos)
        except FirstEpochError:
            raise
        except Exception as exc:
            raise FirstEpochError(f"{self.origin}: the chat template failed on these messages ({exc})") from exc

    @classmethod
    def from_file(cls, path, tokenizer) -> "ChatTemplate":
        try:
            return cls(open(path, encoding="utf-8").read(), tokenizer, origin=str(path))
        except OSError as exc:
            raise FirstEpochError(f"{path}: cannot read the chat template ({exc.strerror})") from exc


def _raise(message: str):
    raise FirstEpochError(f"the chat template refused the messages: {message}")


def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env
