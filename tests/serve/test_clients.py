"""The official `openai` and `ollama` Python clients against a running `firstepoch serve`."""
import json

import numpy as np
import pytest

from tests.llm.test_structured import ASK, PERSON
from tests.llm.test_tools import QUESTION, TOOLS, WEATHER
from tests.retrieval.conftest import docs_folder  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow
CHAT = "smollm2-135m-instruct"


def test_openai_client(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=server.api_key)
    assert {m.id for m in client.models.list()} >= {CHAT, "all-minilm-l6-v2", "digits", "iris"}
    reply = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "What is 2+2?"}],
                                           max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    stream = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "What is 2+2?"}],
                                            max_tokens=12, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2 and "".join(pieces) == text  # greedy: streamed equals whole
    completion = client.completions.create(model=CHAT, prompt="The capital of France is", max_tokens=6,
                                           temperature=0)
    assert completion.choices[0].text.strip() and completion.usage.completion_tokens <= 6
    embeddings = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "stocks fell"])
    vectors = np.array([e.embedding for e in embeddings.data], dtype=np.float32)
    from firstepoch.retrieval import embed

    np.testing.assert_allclose(vectors, embed(["a cat", "stocks fell"]), atol=1e-5)


def test_ollama_client(server):
    import ollama

    client = ollama.Client(host=server.url, headers=server.headers)
    assert {m.model for m in client.list().models} == {CHAT, "all-minilm-l6-v2"}
    answer = client.chat(model=CHAT, messages=[{"role": "user", "content": "Say hello."}],
                         options={"num_predict": 8, "temperature": 0})
    assert answer.message.content and answer.done and answer.eval_count <= 8
    streamed = list(client.chat(model=CHAT, messages=[{"role": "user", "content": "Say hello."}],
                                options={"num_predict": 8, "temperature": 0}, stream=True))
    assert "".join(p.message.content for p in streamed) == answer.message.content and streamed[-1].done
    generated = client.generate(model=CHAT, prompt="Say hello.", options={"num_predict": 8, "temperature": 0})
    assert generated.response == answer.message.content  # /api/generate templates the prompt as a user turn
    embedded = client.embed(model="all-minilm-l6-v2", input=["hello", "world"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 384
    shown = client.show(CHAT)
    assert shown.details.format == "gguf" and shown.details.quantization_level == "Q4_1"
    assert shown.details.parameter_size == "135M"
    with pytest.raises(ollama.ResponseError, match="not found"):
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_openai_client_structured_output(server):
    """response_format json_schema through the official client: 5 sampled answers, each valid against the schema
    (nested objects, enums, arrays); json_object; a schema that cannot be used is a 400."""
    import jsonschema
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=server.api_key)
    schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(5):  # 20 of 20 in tests/llm/test_structured.py; here, the client's flow
        reply = client.chat.completions.create(model=CHAT, messages=ASK, response_format=schema, temperature=0.8,
                                               seed=seed, max_tokens=160)
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)
        assert reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=CHAT, messages=ASK, response_format=schema, temperature=0,
                                            max_tokens=160, stream=True)
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)), PERSON)
    anything = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "A recipe, please."}],
                                              response_format={"type": "json_object"}, temperature=0, max_tokens=120)
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    with pytest.raises(BadRequestError, match="response_format"):
        client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=8, response_format={
            "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}}})


def test_ollama_client_format(server):
    """Ollama's `format`: a JSON schema (5 sampled answers, each valid) and "json"."""
    import jsonschema
    import ollama

    client = ollama.Client(host=server.url, headers=server.headers)
    for seed in range(5):
        answer = client.chat(model=CHAT, messages=ASK, format=PERSON,
                             options={"num_predict": 160, "temperature": 0.8, "seed": seed})
        jsonschema.validate(json.loads(answer.message.content), PERSON)
        assert answer.done_reason == "stop"
    generated = client.generate(model=CHAT, prompt="What is the capital of France? Answer in JSON.", format="json",
                                options={"num_predict": 120, "temperature": 0})
    assert isinstance(json.loads(generated.response), dict)
    import httpx  # the client itself refuses a format other than "json" or a schema

    refused = httpx.post(server.url + "/api/chat", headers=server.headers, timeout=60,
                         json={"model": CHAT, "messages": ASK, "format": "yaml", "stream": False})
    assert refused.status_code == 400 and "format" in refused.json()["error"]


def test_openai_client_tool_calls(server):
    """tools / tool_choice through the official client: the call parsed into tool_calls (streamed as a delta too),
    the result sent back as a tool message, and the answer after it."""
    import jsonschema
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=server.api_key)
    reply = client.chat.completions.create(model=CHAT, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                           temperature=0, max_tokens=100)
    choice = reply.choices[0]
    call = choice.message.tool_calls[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    stream = client.chat.completions.create(model=CHAT, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                            temperature=0, max_tokens=100, stream=True)
    chunks = [c.choices[0] for c in stream if c.choices]
    streamed = [d for c in chunks for d in (c.delta.tool_calls or [])]
    assert chunks[-1].finish_reason == "tool_calls" and len(streamed) == 1
    assert (streamed[0].function.name, streamed[0].function.arguments) == (call.function.name, call.function.arguments)
    follow_up = QUESTION + [choice.message.model_dump(exclude_none=True),
                            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}]
    answer = client.chat.completions.create(model=CHAT, messages=follow_up, tools=TOOLS, tool_choice="none",
                                            temperature=0, max_tokens=40)
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    with pytest.raises(BadRequestError, match="tools"):
        client.chat.completions.create(model=CHAT, messages=QUESTION, max_tokens=8,
                                       tools=[{"type": "function", "function": {"name": "no spaces allowed"}}])


def test_ollama_client_tools(server):
    import jsonschema
    import ollama

    client = ollama.Client(host=server.url, headers=server.headers)
    answer = client.chat(model=CHAT, messages=QUESTION, tools=TOOLS, options={"temperature": 0, "num_predict": 100})
    call = answer.message.tool_calls[0]
    assert call.function.name == "get_weather" and answer.done
    jsonschema.validate(dict(call.function.arguments), WEATHER["function"]["parameters"])
    streamed = list(client.chat(model=CHAT, messages=QUESTION, tools=TOOLS, stream=True,
                                options={"temperature": 0, "num_predict": 100}))
    assert [c.function.name for p in streamed for c in (p.message.tool_calls or [])] == ["get_weather"]
    made = {"function": {"name": "get_weather", "arguments": dict(call.function.arguments)}}
    after = client.chat(model=CHAT, options={"temperature": 0, "num_predict": 40}, tools=TOOLS, messages=QUESTION + [
        {"role": "assistant", "content": "", "tool_calls": [made]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"}])
    assert after.message.content or after.message.tool_calls
