"""Tool calls for any chat model.

The tools are described to the model in its system turn, and its answer is sampled under a JSON schema
(`structured`) that makes it either call one of them, with arguments valid against that tool's parameters, or
reply in words:

    {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}    or    {"response": "Hello!"}

This is the format llama.cpp's server falls back on for a chat template without a tool-call syntax of its own. It
asks nothing of a template but system, user and assistant turns, so every model can call tools: earlier calls come
back as the JSON the assistant answered with, and a tool's result as a user turn that holds it.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from firstepoch.errors import FirstEpochError
from firstepoch.llm.structured import COMPACT

MAX_TOOLS = 128  # as OpenAI's API
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Tool:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object"})  # a JSON schema of the arguments


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])


def read_tools(tools, where: str = "tools") -> list[Tool]:
    """OpenAI's (and Ollama's) `tools`: [{"type": "function", "function": {"name", "description", "parameters"}}],
    each checked; a `FirstEpochError` names the entry that is wrong."""
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise FirstEpochError(f"{where} must be a list of at most {MAX_TOOLS} tools")
    out, names = [], set()
    for i, tool in enumerate(tools):
        spec = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            raise FirstEpochError(f"{where}[{i}] needs type \"function\" and a function.name of 1 to 64 letters, "
                                  f"digits, _ or -")
        if name in names:
            raise FirstEpochError(f"{where}[{i}]: a second tool named {name!r}")
        description, parameters = spec.get("description") or "", spec.get("parameters") or {"type": "object"}
        if not isinstance(description, str) or not isinstance(parameters, dict):
            raise FirstEpochError(f"{where}[{i}]: function.description must be a string and function.parameters a "
                                  f"JSON schema object")
        names.add(name)
        out.append(Tool(name, description, parameters))
    return out


def chosen_tools(tools: list[Tool], choice, where: str = "tool_choice") -> tuple[list[Tool], bool]:
    """The tools the model may call and whether it must call one, from OpenAI's `tool_choice`: "auto" (the
    default), "none", "required", or {"type": "function", "function": {"name": ...}}."""
    if choice is None or choice == "auto":
        return tools, False
    if choice == "none":
        return [], False
    if choice == "required":
        return tools, True
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    named = [t for t in tools if t.name == name]
    if not named:
        raise FirstEpochError(f"{where} must be auto, none, required or {{\"type\": \"function\", \"function\": "
                              f"{{\"name\": ...}}}} naming one of the tools")
    return named, True


def _calls_schema(tools: list[Tool]) -> tuple[dict, dict]:
    """The schema of one call of one of `tools` ({"name": ..., "arguments": ...}) and the definitions its tools'
    parameters refer to (`$defs`, as Pydantic writes them), moved to the root of the answer's schema under names
    of their tool's own (their `$ref`s rewritten), since the parameters are nested inside it."""
    calls, defs = [], {}
    for i, t in enumerate(tools):
        parameters = dict(t.parameters)
        own = {**parameters.pop("definitions", {}), **parameters.pop("$defs", {})}
        renamed = {name: f"t{i}_{name}" for name in own}
        parameters = _refs_renamed(parameters, renamed)
        defs.update({renamed[name]: _refs_renamed(d, renamed) for name, d in own.items()})
        calls.append({"type": "object", "properties": {"name": {"const": t.name}, "arguments": parameters},
                      "required": ["name", "arguments"], "additionalProperties": False})
    return (calls[0] if len(calls) == 1 else {"anyOf": calls}), defs


def _refs_renamed(node, renamed: dict):
    if isinstance(node, dict):
        out = {k: _refs_renamed(v, renamed) for k, v in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
            name = ref.split("/", 2)[2]
            out["$ref"] = f"#/$defs/{renamed.get(name, name)}"
        return out
    if isinstance(node, list):
        return [_refs_renamed(v, renamed) for v in node]
    return node


def answer_schema(tools: list[Tool], required: bool) -> dict:
    """The JSON schema of the model's answer: a call of one of `tools` or, unless `required`, a reply."""
    calls, defs = _calls_schema(tools)
    call = {"type": "object", "properties": {"tool_call": calls}, "required": ["tool_call"],
            "additionalProperties": False}
    reply = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
             "additionalProperties": False}
    schema = call if required else {"anyOf": [call, reply]}
    return {**schema, "$defs": defs} if defs else schema


def instructions(tools: list[Tool], required: bool) -> str:
    listed = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
                        ensure_ascii=False)
    how = ('Answer with one JSON object that calls a tool: {"tool_call": {"name": <the tool>, "arguments": '
           '<its arguments>}}.' if required else
           'Answer with one JSON object: {"tool_call": {"name": <the tool>, "arguments": <its arguments>}} to call a '
           'tool, or {"response": <your reply>} to answer the user directly.')
    return f"You can call these tools (each with a JSON schema of its arguments):\n{listed}\n{how}"


def with_tools(messages: list[dict], tools: list[Tool], required: bool) -> list[dict]:
    """The conversation as any template renders it: the tools' instructions in the system turn; an assistant turn
    that called tools (OpenAI's `tool_calls`, arguments a JSON string, or Ollama's, arguments an object) as the
    JSON it answered with; a tool's result (`role: tool`) as a user turn holding it, by the name of its call."""
    names = {}  # tool_call_id -> the tool's name, from the assistant turns before
    out = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise FirstEpochError("messages: an assistant's tool_calls must be a list")
            calls = [_call_of(c) for c in m["tool_calls"]]
            names.update({c.id: c.name for c in calls})
            content = "\n".join(json.dumps({"tool_call": {"name": c.name, "arguments": c.arguments}},
                                           ensure_ascii=False) for c in calls)
        elif role == "tool":
            call_id = m.get("tool_call_id")
            name = m.get("tool_name") or m.get("name") or (names.get(call_id, "") if isinstance(call_id, str) else "")
            role, content = "user", json.dumps({"tool_response": {"name": name, "content": content}},
                                               ensure_ascii=False)
        if out and out[-1]["role"] == role == "user":  # several results in a row: one user turn
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + content}
        else:
            out.append({"role": role, "content": content})
    system = instructions(tools, required)
    if out and out[0]["role"] == "system":
        return [{"role": "system", "content": out[0]["content"] + "\n\n" + system}, *out[1:]]
    return [{"role": "system", "content": system}, *out]


def _call_of(call) -> ToolCall:
    spec = call.get("function") if isinstance(call, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise FirstEpochError("messages: a tool call needs function.name and function.arguments")
    arguments = spec.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
            json.dumps(arguments, ensure_ascii=False).encode()  # a lone surrogate escaped in the string fails here
        except (ValueError, RecursionError, UnicodeEncodeError):
            raise FirstEpochError(f"messages: the arguments of a call of {spec['name'][:64]!r} are not JSON "
                                  f"text") from None
    call_id = call.get("id")
    return ToolCall(spec["name"], arguments, call_id if isinstance(call_id, str) and call_id else ToolCall("", {}).id)


def read_answer(text: str) -> tuple[str | None, list[ToolCall]]:
    """The model's answer as (reply, calls): the tools it called, or its words. An answer cut short by the token
    limit (not JSON yet) is returned as the reply, as it stands."""
    try:
        answer = json.loads(text)
    except (ValueError, RecursionError):
        return text, []
    if isinstance(answer, dict) and isinstance(answer.get("tool_call"), dict):
        call = answer["tool_call"]
        return None, [ToolCall(call["name"], call.get("arguments") or {})]
    if isinstance(answer, dict) and isinstance(answer.get("response"), str):
        return answer["response"], []
    return text, []


# --------------------------------------------------------------------------- a template's own tool-call syntax

class JsonSyntax:
    """Any template: the tools described in the system turn, the answer under `answer_schema` (see above)."""

    name = "json"

    def prepare(self, messages: list[dict], tools: list[Tool], required: bool) -> tuple[list[dict], None, dict]:
        """(messages for the template, the `tools` the template is given (None), sampling options)."""
        return with_tools(messages, tools, required), None, {"json_schema": answer_schema(tools, required)}

    def read(self, text: str) -> tuple[str | None, list[ToolCall]]:
        return read_answer(text)


_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


class HermesSyntax:
    """Templates that describe the tools themselves and whose models call them as

        <tool_call>
        {"name": "get_weather", "arguments": {"city": "Paris"}}
        </tool_call>

    (Qwen 2.5 and 3, Hermes, SmolLM3 and others trained on that format). The template is given OpenAI's `tools`, the
    earlier calls as the assistant's `tool_calls` and the results as `tool` turns, and renders them in its own
    words; the answer is sampled under a grammar that is either one call in that syntax, with arguments valid
    against its tool's parameters (as llama.cpp's server does unless parallel calls are asked for), or (unless a
    call is required) a reply that does not start with one. `read` takes any number of calls."""

    name = "hermes"

    def prepare(self, messages: list[dict], tools: list[Tool], required: bool) -> tuple[list[dict], list, dict]:
        out = []
        for m in messages:
            if m["role"] == "assistant" and m.get("tool_calls"):
                if not isinstance(m["tool_calls"], list):
                    raise FirstEpochError("messages: an assistant's tool_calls must be a list")
                calls = [_call_of(c) for c in m["tool_calls"]]
                out.append({"role": "assistant", "content": m.get("content") or "", "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls]})
            elif m["role"] == "tool":
                out.append({"role": "tool", "content": m.get("content") or "",
                            **{k: m[k] for k in ("tool_call_id", "name", "tool_name") if isinstance(m.get(k), str)}})
            else:
                out.append({"role": m["role"], "content": m.get("content") or ""})
        listed = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                     "parameters": t.parameters}} for t in tools]
        return out, listed, {"grammar": self.grammar(tools, required)}

    @staticmethod
    def grammar(tools: list[Tool], required: bool) -> str:
        """llguidance's Lark grammar of the answer: thinking first if the model does (`<think>...</think>`, as Qwen
        3 does; without a '<' inside), then one call (as llama.cpp's server, unless parallel calls are asked
        for), or, unless `required`, a reply; a reply may not start as a call does ('<to'), and a call inside a
        reply is still read (`read`), its arguments then unchecked. The JSON is compact, as `structured`'s."""
        calls, defs = _calls_schema(tools)
        body = json.dumps({**calls, **({"$defs": defs} if defs else {}), "x-guidance": COMPACT}, ensure_ascii=False)
        rules = [f"start: think? {'call' if required else '(call | reply)'}",
                 'think: "<think>" /[^<]*/ "</think>" /[ \\n]*/',
                 'call: "<tool_call>\\n" body "\\n</tool_call>"',
                 f"body: %json {body}"]
        if not required:
            rules.append("reply: /(?s:([^<]|<[^t]|<t[^o]).*)/")
        return "\n".join(rules) + "\n"

    def read(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The calls in the answer (words around them, if any, as its reply); an answer cut short inside a call is
        returned as the reply, as it stands."""
        calls = []
        for match in _HERMES_CALL.finditer(text):
            try:
                call = json.loads(match.group(1))
            except (ValueError, RecursionError):
                return text, []
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return text, []
            arguments = call.get("arguments") or {}
            calls.append(ToolCall(call["name"], arguments if isinstance(arguments, dict) else {}))
        if not calls:
            return text, []
        rest = _HERMES_CALL.sub("", text).strip()
        return rest or None, calls


def syntax_for(lm) -> JsonSyntax | HermesSyntax:
    """The tool-call syntax of a model's chat template: Hermes-style where the template describes `tools` and
    writes `<tool_call>` blocks of JSON, else the JSON format every template can carry. Checking the template
    compiles it once (in its sandbox): call this off the event loop."""
    template = getattr(lm, "chat_template", None)
    source = getattr(template, "source", None) if template is not None and not template.fallback else None
    # a JSON body inside the tags: not Qwen3-Coder's <function=...> nor GLM's <arg_key> forms
    if source and "<tool_call>" in source and "tools" in source and not any(
            other in source for other in ("<function=", "<arg_key>")):
        return HermesSyntax()
    return JsonSyntax()
