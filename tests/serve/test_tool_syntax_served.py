"""`serve --chat-template` with a template that has its own tool-call syntax (Hermes-style `<tool_call>` blocks):
the official openai and ollama clients get tool_calls parsed from that syntax, and the template renders the calls
and results sent back."""
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
    s = Server([CHAT, "--chat-template", TEMPLATE, "--context", "1024", "--parallel", "2"], env)
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
    answer = client.chat.completions.create(model=CHAT, messages=follow_up, tools=TOOLS, temperature=0,
                                            max_tokens=30)
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


def test_ollama_client_calls_a_tool_in_the_templates_syntax(hermes_server):
    import ollama

    client = ollama.Client(host=hermes_server.url, headers=hermes_server.headers)
    streamed = list(client.chat(model=CHAT, messages=QUESTION, tools=TOOLS, stream=True,
                                options={"temperature": 0, "num_predict": 100}))
    calls = [c for p in streamed for c in (p.message.tool_calls or [])]
    words = "".join(p.message.content or "" for p in streamed)
    assert calls or words  # a call in the template's syntax, or a reply that does not start one
    for call in calls:
        assert call.function.name in ("get_weather", "add") and isinstance(call.function.arguments, dict)
