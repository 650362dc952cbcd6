"""The server under bad requests, a full queue, disconnects, time limits and SIGTERM."""
import json
import os
import signal
import threading
import time

import httpx
import pytest

from tests.retrieval.conftest import docs_folder  # noqa: F401  (the fixture)
from tests.serve.conftest import Server

pytestmark = pytest.mark.slow
CHAT = "smollm2-135m-instruct"
LONG = {"model": CHAT, "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
        "max_tokens": 400, "temperature": 0.7, "stream": True}


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=server.headers).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_api_key_guards_every_route_but_the_page(server):
    for method, path in [("GET", "/v1/models"), ("GET", "/api/tags"), ("GET", "/health"), ("GET", "/metrics"),
                         ("POST", "/v1/chat/completions"), ("POST", "/api/chat"), ("POST", "/v1/search/docs"),
                         ("POST", "/v1/predict/digits"), ("GET", "/v1/runs")]:
        r = httpx.request(method, server.url + path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, path
        assert httpx.request(method, server.url + path).status_code == 401, path
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>firstepoch</title>" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text  # nothing remote


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object"),
    ("/v1/chat/completions", b"", 400, "empty"),
    ("/v1/chat/completions", json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404,
     "'gpt-4' is not served here"),
    ("/v1/chat/completions", json.dumps({"model": CHAT}), 400, "'messages' is required"),
    ("/v1/chat/completions", json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}],
                                         "temperature": "hot"}), 400, "'temperature' must be float"),
    ("/v1/chat/completions", json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "n": 2}),
     400, "only n=1"),
    ("/v1/completions", json.dumps({"model": CHAT, "prompt": "word " * 1500}), 400,
     "tokens but the model's context is 1024"),
    ("/api/chat", json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "word " * 300}],
                              "options": {"num_ctx": 256}}), 400, "but num_ctx is 256"),
    ("/api/chat", json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}],
                              "options": {"num_ctx": 0}}), 400, "'num_ctx' must be between"),
    ("/v1/chat/completions", json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}],
                                         "response_format": {"type": "xml"}}), 400, "response_format.type"),
    ("/v1/chat/completions", json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}],
                                         "response_format": {"type": "json_schema", "json_schema": {
                                             "schema": {"type": "string", "pattern": "("}}}}), 400, "cannot be used"),
    ("/v1/chat/completions", json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}],
                                         "tools": [{"type": "function", "function": {"name": "f"}}],
                                         "tool_choice": {"type": "function", "function": {"name": "g"}}}),
     400, "tool_choice"),
    ("/v1/embeddings", json.dumps({"model": CHAT, "input": "x"}), 404, "embedding model"),
    ("/v1/embeddings", json.dumps({"model": "all-minilm-l6-v2", "input": []}), 400, "non-empty list"),
    ("/api/chat", b"{oops", 400, "not valid JSON"),
    ("/api/generate", json.dumps({"model": "llama3"}), 404, "model 'llama3' not found"),
    ("/v1/search/docs", json.dumps({"k": 3}), 400, "'query' is required"),
    ("/v1/predict/iris", json.dumps({"row": {"sepal length (cm)": "x"}}), 400, ""),
    ("/v1/nothing-here", b"{}", 404, "no such route"),
])
def test_bad_requests_get_a_clear_4xx(server, path, body, status, message):
    r = httpx.post(server.url + path, content=body, headers={**server.headers, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    text = error if path.startswith("/api/") else error["message"]
    assert message in text
    if not path.startswith("/api/"):
        assert set(error) == {"message", "type", "param", "code"}  # OpenAI's shape


def test_bodies_and_uploads_over_the_limit_are_413(server):
    big = json.dumps({"model": CHAT, "prompt": "x" * (2 << 20)})
    r = httpx.post(server.url + "/v1/completions", content=big, headers={**server.headers,
                                                                        "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(40):
            yield b"x" * 65536

    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers=server.headers)
    assert r.status_code == 413
    r = httpx.post(server.url + "/v1/predict/digits", files={"file": ("big.png", b"\x89PNG" + b"0" * (21 << 20))},
                   headers=server.headers)
    assert r.status_code == 413


def test_no_route_reads_a_path_from_the_request(server):
    for bad in ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "....//....//etc"]:
        for path in (f"/v1/predict/{bad}", f"/v1/search/{bad}", f"/v1/ask/{bad}", f"/v1/runs/{bad}"):
            r = httpx.request("GET" if "runs" in path else "POST", server.url + path, headers=server.headers,
                              json={"query": "x", "question": "x"})
            assert r.status_code in (404, 405), (path, r.status_code, r.text)
            assert "root:" not in r.text
    for model in ["../../etc/passwd", "/etc/passwd", "~/.ssh/id_rsa"]:
        r = httpx.post(server.url + "/v1/chat/completions", headers=server.headers,
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404
        r = httpx.post(server.url + "/api/show", headers=server.headers, json={"model": model})
        assert r.status_code == 404


def test_uploads_leave_the_disk_as_it_was(server, served_things):
    tmp, _, digits = served_things
    before = sorted(os.listdir(tmp / "tmp"))
    image = next((digits / "test").glob("*/*.png")).read_bytes()
    for i in range(30):
        name, data = [("d.png", image), ("evil/../../x.png", image), ("broken.png", b"not an image"),
                      ("a.exe", b"MZ")][i % 4]
        r = httpx.post(server.url + "/v1/predict/digits", files={"file": (name, data)}, headers=server.headers)
        assert r.status_code in (200, 400), r.text
    assert sorted(os.listdir(tmp / "tmp")) == before


def test_full_queue_is_503_health_stays_fast_and_disconnects_free_the_slot(server):
    cancelled_before = metric(server, "firstepoch_cancelled_generations_total")
    clients, contexts, streams = [], [], []
    for _ in range(2):  # one generating, one queued: the queue (size 1) is full
        client = httpx.Client(base_url=server.url, headers=server.headers, timeout=60)
        contexts.append(client.stream("POST", "/v1/chat/completions", json=LONG))
        clients.append(client)
        streams.append(contexts[-1].__enter__())
    first = streams[0].iter_lines()
    assert next(line for line in first if line.startswith("data:"))  # generation is under way
    deadline = time.time() + 10
    while metric(server, 'firstepoch_queue_depth{model="smollm2') < 1 and time.time() < deadline:
        time.sleep(0.1)
    r = httpx.post(server.url + "/v1/chat/completions", json=LONG, headers=server.headers)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]["message"]
    started = time.perf_counter()
    health = httpx.get(server.url + "/health", headers=server.headers)
    assert health.status_code == 200 and time.perf_counter() - started < 1.0
    assert health.json()["models"][CHAT]["busy"]
    for stream, client in zip(streams, clients):  # both clients leave mid-stream
        stream.close()
        client.close()
    deadline = time.time() + 20
    while time.time() < deadline and (metric(server, "firstepoch_cancelled_generations_total") < cancelled_before + 1
                                      or httpx.get(server.url + "/health", headers=server.headers)
                                      .json()["models"][CHAT]["busy"]):
        time.sleep(0.2)
    # the running generation was stopped; the queued one never started
    assert metric(server, "firstepoch_cancelled_generations_total") == cancelled_before + 1
    assert metric(server, 'firstepoch_queue_depth{model="smollm2') == 0
    started = time.perf_counter()  # the slot is free: a new request starts at once
    r = httpx.post(server.url + "/v1/chat/completions", headers=server.headers,
                   json={**LONG, "stream": False, "max_tokens": 2})
    assert r.status_code == 200 and time.perf_counter() - started < 10


def test_time_limit_and_sigterm_end_streams_cleanly(served_things):
    _, env, _ = served_things
    s = Server([CHAT, "--timeout", "3", "--context", "1024"], env, api_key=None)
    try:
        started = time.perf_counter()
        # greedy: the story is longer than 3 s of tokens (sampled, it may end early)
        r = httpx.post(s.url + "/v1/chat/completions", json={**LONG, "stream": False, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and time.perf_counter() - started < 10
        assert r.json()["choices"][0]["finish_reason"] == "length"  # cut by the 3 s limit, reported
        lines = []

        def read():
            with httpx.stream("POST", s.url + "/v1/chat/completions", json=LONG, timeout=60) as stream:
                lines.extend(stream.iter_lines())

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(1.0)
        s.proc.send_signal(signal.SIGTERM)
        reader.join(30)
        assert s.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its clean shutdown
        assert "Finished server process" in s.proc.stdout.read()
        data = [line for line in lines if line.startswith("data:")]
        assert data[-1] == "data: [DONE]"  # the stream ended with its usual last message
        assert json.loads(data[-2][6:])["choices"][0]["finish_reason"] == "length"
    finally:
        s.stop()
