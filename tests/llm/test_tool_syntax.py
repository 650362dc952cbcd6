"""A template with its own tool-call syntax (Hermes-style `<tool_call>` blocks, as Qwen 2.5 and 3 write them): the
template is given the tools and the earlier calls and results, and the answer is sampled under a grammar of that
syntax, so even the bundled 135M model calls a tool in it with arguments valid against the tool's parameters."""
import json
from pathlib import Path

import pytest

from firstepoch.llm.chat import ChatTemplate
from firstepoch.llm.tools import HermesSyntax, JsonSyntax, read_tools, syntax_for

jsonschema = pytest.importorskip("jsonschema")
TEMPLATE = Path(__file__).with_name("data") / "hermes_tools.jinja"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "The sum of two numbers.", "parameters": {
             "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
             "required": ["a", "b"], "additionalProperties": False}}}]
ASK = [{"role": "user", "content": "What is the weather like in Lima?"}]


@pytest.fixture
def hermes(smollm):
    before = smollm.chat_template
    smollm.chat_template = ChatTemplate(TEMPLATE.read_text(), smollm.tokenizer, origin=str(TEMPLATE))
    yield smollm
    smollm.chat_template = before


def run(lm, messages, required, **options):
    syntax = syntax_for(lm)
    shown, listed, sampling = syntax.prepare(messages, read_tools(TOOLS), required)
    prompt = lm.render_chat(shown, listed)
    generation = lm.generate(prompt, special=True, max_new_tokens=80, **sampling, **options)
    return prompt, syntax.read("".join(generation)), generation.stats


def test_the_template_is_given_the_tools_and_the_answer_is_a_call_in_its_syntax(hermes):
    assert isinstance(syntax_for(hermes), HermesSyntax)
    for seed in range(5):
        prompt, (reply, calls), stats = run(hermes, ASK, True, temperature=0.8, seed=seed)
        assert '"name": "get_weather"' in prompt and "<tools>" in prompt  # in the template's own words
        assert len(calls) >= 1 and stats.finish_reason == "stop", (reply, calls)
        for call in calls:
            schema = WEATHER if call.name == "get_weather" else TOOLS[1]["function"]["parameters"]
            assert call.name in ("get_weather", "add")
            jsonschema.validate(call.arguments, schema)


def test_earlier_calls_and_results_are_rendered_by_the_template(hermes):
    messages = ASK + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Lima", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "19 degrees, cloudy"}]
    prompt, (reply, calls), _ = run(hermes, messages, False, temperature=0)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima", "unit": "celsius"}}' in prompt
    assert "<tool_response>\n19 degrees, cloudy\n</tool_response>" in prompt
    assert reply and not calls  # here the model answers in words (a call was allowed too)


def test_reading_answers_in_the_syntax():
    read = HermesSyntax().read
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    reply, calls = read(call)
    assert reply is None and [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})]
    reply, calls = read("Let me add them.\n" + call + "\n" + call)
    assert reply == "Let me add them." and len(calls) == 2
    assert read('<tool_call>\n{"name": "add", "argu') == ('<tool_call>\n{"name": "add", "argu', [])  # cut short
    assert read("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
    deep = "<tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>"
    assert read(deep) == (deep, [])  # too deep for Python's JSON reader: words, not an error
    assert read("Hello!") == ("Hello!", [])


PYDANTIC = {"type": "object", "properties": {"trip": {"$ref": "#/$defs/Trip"}}, "required": ["trip"],
            "additionalProperties": False,
            "$defs": {"Trip": {"type": "object", "properties": {"city": {"$ref": "#/$defs/City"},
                                                                "days": {"type": "integer", "minimum": 1,
                                                                         "maximum": 9}},
                               "required": ["city", "days"], "additionalProperties": False},
                      "City": {"enum": ["Lima", "Cusco"]}}}


@pytest.mark.parametrize("syntax", ["hermes", "json"])
def test_parameters_with_definitions_as_pydantic_writes_them(hermes, syntax):
    """`$defs` and `$ref`s inside a tool's parameters still resolve once the parameters sit inside the answer's
    grammar (they are moved to its root), in both syntaxes."""
    from firstepoch.llm.tools import JsonSyntax

    chosen = HermesSyntax() if syntax == "hermes" else JsonSyntax()
    tools = read_tools([{"type": "function", "function": {"name": "plan", "parameters": PYDANTIC}}])
    shown, listed, sampling = chosen.prepare([{"role": "user", "content": "Plan a trip to Peru."}], tools, True)
    text = hermes.generate(hermes.render_chat(shown, listed), special=True, max_new_tokens=60, temperature=0,
                           stream=False, **sampling)
    reply, calls = chosen.read(text)
    assert len(calls) == 1 and calls[0].name == "plan", text
    jsonschema.validate(calls[0].arguments, PYDANTIC)


def test_a_template_without_a_tool_syntax_gets_the_json_one(smollm):
    assert isinstance(syntax_for(smollm), JsonSyntax)
