"""Structured output: sampled under a JSON schema's grammar, the bundled model's text always parses and validates."""
import json

import pytest

from firstepoch.errors import FirstEpochError
from firstepoch.llm.structured import ANY_OBJECT

jsonschema = pytest.importorskip("jsonschema")

# nested objects, enums, arrays, bounded strings and numbers
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
        "address": {"type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 30},
                                   "country": {"enum": ["France", "Japan", "Peru"]}},
                    "required": ["city", "country"], "additionalProperties": False},
    },
    "required": ["name", "age", "colour", "tags", "address"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]


def _nested(depth: int) -> dict:
    schema = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_twenty_sampled_answers_all_validate_against_the_schema(smollm):
    """At temperature 0.8 with 20 seeds: every answer is complete JSON that validates, and ends by itself."""
    for seed in range(20):
        reply = smollm.chat(ASK, temperature=0.8, seed=seed, max_new_tokens=160, json_schema=PERSON)
        text = "".join(reply)
        jsonschema.validate(json.loads(text), PERSON)
        assert reply.stats.finish_reason == "stop", text


def test_without_the_schema_the_same_request_is_free_text(smollm):
    """The grammar is what makes the JSON: the same greedy request without it does not answer in this schema."""
    free = smollm.chat(ASK, temperature=0, max_new_tokens=60, stream=False)
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free), PERSON)
    constrained = json.loads(smollm.chat(ASK, temperature=0, max_new_tokens=160, stream=False, json_schema=PERSON))
    jsonschema.validate(constrained, PERSON)


def test_any_json_object_and_a_cut_short_answer(smollm):
    text = smollm.chat([{"role": "user", "content": "Give me a recipe."}], temperature=0, max_new_tokens=120,
                       stream=False, json_schema=ANY_OBJECT)
    assert isinstance(json.loads(text), dict)
    short = smollm.chat(ASK, temperature=0, max_new_tokens=5, json_schema=PERSON)
    assert "".join(short).startswith('{"name": "') and short.stats.finish_reason == "length"


@pytest.mark.parametrize("schema, says", [
    ({"type": "no-such-type"}, "cannot be used"),
    ({"properties": {"a": {"$ref": "#/nowhere"}}, "required": ["a"]}, "cannot be used"),
    ({"type": "object", "properties": {f"k{i}": {"type": "string"} for i in range(4000)}}, "characters"),
    (["not", "an", "object"], "must be an object"),
    (_nested(2000), "nested too deeply"),  # past what Python's JSON encoder takes
    (_nested(300), "cannot be read"),  # past llguidance's own recursion limit
    ({"type": "string", "pattern": "("}, "unclosed group"),  # llguidance says so over three lines: one here
])
def test_a_schema_that_cannot_be_used_is_one_line_naming_the_field(smollm, schema, says):
    with pytest.raises(FirstEpochError, match=says) as caught:
        smollm.chat(ASK, max_new_tokens=4, json_schema=schema)
    assert "response_format" in str(caught.value) and "\n" not in str(caught.value)


def test_a_gpt_of_your_own_has_no_grammar_tokenizer():
    from firstepoch.llm.structured import guidance_tokenizer

    class CharTokenizer:  # a GPT's own tokenizer: characters, no tokenizer.json to build a vocabulary from
        end_ids = frozenset()

    with pytest.raises(FirstEpochError, match="LLM's tokenizer"):
        guidance_tokenizer(CharTokenizer(), 65)


def test_json_finished_by_the_last_allowed_token_stops_rather_than_runs_out(smollm):
    whole = smollm.chat(ASK, temperature=0, max_new_tokens=200, json_schema=PERSON)
    text = "".join(whole)
    n = whole.stats.completion_tokens
    exact = smollm.chat(ASK, temperature=0, max_new_tokens=n, json_schema=PERSON)
    assert "".join(exact) == text and exact.stats.finish_reason == "stop", exact.stats
