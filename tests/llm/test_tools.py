"""Tool calls: the tools described in the system turn, the answer sampled under their schema, results fed back."""
import json

import pytest

from firstepoch.errors import FirstEpochError
from firstepoch.llm.tools import answer_schema, chosen_tools, read_answer, read_tools, with_tools

jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def _ask(smollm, messages, choice=None, **options):
    tools, required = chosen_tools(read_tools(TOOLS), choice)
    text = smollm.chat(with_tools(messages, tools, required), stream=False, json_schema=answer_schema(tools, required),
                       **{"temperature": 0, "max_new_tokens": 100, **options})
    return read_answer(text)


def test_a_required_call_is_always_a_valid_call_of_one_of_the_tools(smollm):
    parameters = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for seed in range(5):
        reply, calls = _ask(smollm, QUESTION, "required", temperature=0.8, seed=seed)
        assert reply is None and len(calls) == 1 and calls[0].id.startswith("call_")
        jsonschema.validate(calls[0].arguments, parameters[calls[0].name])


def test_a_named_tool_is_the_one_called_with_the_city_asked_about(smollm):
    reply, calls = _ask(smollm, QUESTION, {"type": "function", "function": {"name": "get_weather"}})
    assert reply is None and calls[0].name == "get_weather" and calls[0].arguments["city"] == "Paris"
    reply, calls = _ask(smollm, [{"role": "user", "content": "What is 2 + 3?"}], "auto")
    assert calls and calls[0].name == "add" and calls[0].arguments == {"a": 2, "b": 3}


def test_without_tools_the_answer_is_words(smollm):
    reply, calls = _ask(smollm, QUESTION, "none")  # tool_choice none: no tool in the prompt or the schema
    assert calls == [] and reply
    assert read_answer('{"response": "Hello there"}') == ("Hello there", [])
    assert read_answer('{"tool_call": {"name": "ad') == ('{"tool_call": {"name": "ad', [])  # cut short: as it is


def test_calls_and_results_go_back_into_any_template(smollm):
    """An assistant turn's calls (OpenAI's arguments as a JSON string, Ollama's as an object) come back as the
    JSON it answered with, and the tools' results as one user turn, each by the name of its call."""
    messages = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}},
            {"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
        {"role": "tool", "tool_name": "add", "content": "3"}]
    rendered = with_tools(messages, read_tools(TOOLS), False)
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert '"get_weather"' in rendered[0]["content"] and '"tool_call"' in rendered[2]["content"]
    results = [json.loads(line)["tool_response"] for line in rendered[3]["content"].splitlines()]
    assert results == [{"name": "get_weather", "content": "18 degrees and sunny"}, {"name": "add", "content": "3"}]
    prompt = smollm.render_chat(rendered)  # the bundled template has no tool syntax: it renders all the same
    assert "18 degrees and sunny" in prompt and prompt.count("<|im_start|>") == 5
    reply, calls = _ask(smollm, messages)
    assert reply or calls  # the model's choice; either way a well-formed answer


@pytest.mark.parametrize("tools, says", [
    ("get_weather", "must be a list"),
    ([{"type": "function", "function": {"name": "has space"}}], r"tools\[0\] needs"),
    ([WEATHER, WEATHER], "a second tool named"),
    ([{"type": "function", "function": {"name": "f", "parameters": "none"}}], "JSON schema object"),
    ([WEATHER] * 129, "at most 128"),
])
def test_tools_that_cannot_be_used_are_one_line_naming_the_entry(tools, says):
    with pytest.raises(FirstEpochError, match=says):
        read_tools(tools)
    for choice in ({"type": "function", "function": {"name": "no_such_tool"}}, {"function": "add"}, 7):
        with pytest.raises(FirstEpochError, match="tool_choice"):
            chosen_tools(read_tools(TOOLS), choice)
    for calls in (7, "add", [{"function": "add"}]):
        with pytest.raises(FirstEpochError, match="tool_calls|tool call"):
            with_tools([{"role": "assistant", "content": "", "tool_calls": calls}], read_tools(TOOLS), False)
