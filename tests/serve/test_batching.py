"""A server that batches: concurrent streams decoded together answer what each answers alone; its guards hold."""
import json
import threading

import httpx
import pytest

from tests.retrieval.conftest import docs_folder  # noqa: F401  (the fixture)
from tests.serve.conftest import Server

pytestmark = pytest.mark.slow
CHAT = "smollm2-135m-instruct"
QUESTIONS = ["What is a lighthouse?", "Name three fruits.", "Why is the sky blue?", "Say hello in French.",
             "What is 2 + 2?", "Write a haiku about rain."]
SCHEMA = {"type": "object", "properties": {"city": {"enum": ["Lima", "Cusco", "Quito"]}}, "required": ["city"],
          "additionalProperties": False}


def ask(server, question, **extra):
    body = {"model": CHAT, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 40,
            "stream": True, **extra}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers,
                      timeout=120) as r:
        assert r.status_code == 200, r.read()
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.fixture(scope="module")
def batching(served_things):
    _, env, _ = served_things
    s = Server([CHAT, "--parallel", "4", "--queue", "8", "--context", "512"], env)
    yield s
    s.stop()


def test_concurrent_streams_answer_as_each_does_alone(batching):
    """Six streams at once on four slots (two wait their turn, then join the batch): each answer is the one that
    request gets alone on the same server, greedy text word for word; a JSON-schema request among them too."""
    alone = [ask(batching, q) for q in QUESTIONS]
    alone_json = ask(batching, "Answer in JSON: what is the capital of Peru?",
                     response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}})
    results, threads = {}, []
    for i, q in enumerate(QUESTIONS):
        threads.append(threading.Thread(target=lambda i=i, q=q: results.__setitem__(i, ask(batching, q))))
    threads.append(threading.Thread(target=lambda: results.__setitem__("json", ask(
        batching, "Answer in JSON: what is the capital of Peru?",
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [results[i] for i in range(len(QUESTIONS))] == alone
    assert results["json"] == alone_json and json.loads(alone_json)["city"] in SCHEMA["properties"]["city"]["enum"]


def test_a_client_that_leaves_frees_its_slot_for_the_next(batching):
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 400,
            "stream": True}
    for _ in range(6):  # more than the four slots: each left stream must give its slot back
        with httpx.stream("POST", batching.url + "/v1/chat/completions", json=body, headers=batching.headers,
                          timeout=60) as r:
            next(line for line in r.iter_lines() if line.startswith("data: {"))
    assert ask(batching, "What is 2 + 2?")  # answered: no slot was left taken
