"""`serve --chat-template` with a template that has its own tool-call syntax (Hermes-style `<tool_call>` blocks):
the official openai client gets tool_calls parsed from that syntax, the template renders the calls and results
sent back, and Ollama's route answers as OpenAI's; the server batches two requests over a Q8_0 KV cache."""
import json

import pytest

from tests.llm.test_tool_syntax import TEMPLATE, TOOLS, WEATHER
from tests.retrieval.conftest import docs_folder  # noqa: F401  (the fixture)
from tests.serve.conftest import Server

pytestmark = pytest.mark.slow
CHAT = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the weather like in Lima?"}]


@pytest.fixture(scope="module")
def hermes_server(served_things):
    _, env, _ = served_things
    s = Server([CHAT, "--chat-template", TEMPLATE, "--context", "1024", "--parallel", "2", "--kv-cache", "q8_0"],
               env)  # batched, with a Q8_0 KV cache too
    yield s
    s.stop()


def test_openai_client_calls_a_tool_in_the_templates_syntax(hermes_server):
    import jsonschema
    from openai import OpenAI

    client = OpenAI(base_url=hermes_server.url + "/v1", api_key=hermes_server.api_key)
    reply = client.chat.completions.create(model=CHAT, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                           temperature=0, max_tokens=100)
    choice = reply.choices[0]
    call = choice.message.tool_calls[0]
    assert choice.finish_reason == "tool_calls" and call.function.name in ("get_weather", "add")
    if call.function.name == "get_weather":
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    follow_up = QUESTION + [choice.message.model_dump(exclude_none=True),
                            {"role": "tool", "tool_call_id": call.id, "content": "19 degrees, cloudy"}]
    answer = client.chat.completions.create(model=CHAT, messages=follow_up, tools=TOOLS, tool_choice="none",
                                            temperature=0, max_tokens=30)
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None  # the result read


def test_ollamas_route_answers_what_the_openai_route_does(hermes_server):
    """Ollama's /api/chat has no tool_choice (auto): the same template, tools and grammar as OpenAI's route with
    tool_choice auto, so greedy answers are the same (here the bundled model answers in words). Sent as JSON: the
    ollama client drops schema keywords its Tool model lacks (maxLength, additionalProperties)."""
    import httpx
    from openai import OpenAI

    lines = httpx.post(hermes_server.url + "/api/chat", headers=hermes_server.headers, timeout=120, json={
        "model": CHAT, "messages": QUESTION, "tools": TOOLS, "stream": True,
        "options": {"temperature": 0, "num_predict": 60, "repeat_penalty": 1.0}}).text.splitlines()
    messages = [json.loads(line)["message"] for line in lines if line.strip()]
    calls = [(c["function"]["name"], c["function"]["arguments"]) for m in messages for c in m.get("tool_calls", [])]
    words = "".join(m.get("content") or "" for m in messages)
    reply = OpenAI(base_url=hermes_server.url + "/v1", api_key=hermes_server.api_key).chat.completions.create(
        model=CHAT, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=60).choices[0].message
    assert words == (reply.content or "") and words and not words.startswith("<to")
    assert calls == [(c.function.name, json.loads(c.function.arguments)) for c in reply.tool_calls or []]
