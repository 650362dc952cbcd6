"""Plain HTTP for what only firstepoch serves: predictions, document search and answers, runs, health, metrics."""
import json

import httpx
import pytest
from PIL import Image

from tests.retrieval.conftest import docs_folder  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def test_predict_an_image_and_a_pdf_upload(server, served_things):
    import firstepoch

    tmp, _, digits = served_things
    image = next((digits / "test" / "3").glob("*.png"))
    r = httpx.post(server.url + "/v1/predict/digits", files={"file": (image.name, image.read_bytes())},
                   headers=server.headers)
    assert r.status_code == 200, r.text
    out = r.json()
    predictor = firstepoch.load(tmp / "digits-model")
    expected = predictor.predict(image)
    assert out["label"] == expected["label"] and abs(out["probability"] - expected["probability"]) < 1e-6
    assert out["probs"] == pytest.approx(expected["probs"], abs=1e-6)
    assert abs(sum(out["probs"].values()) - 1) < 1e-4
    pdf = tmp / "scan-of-a-3.pdf"
    Image.open(image).convert("RGB").save(pdf, format="PDF")
    r = httpx.post(server.url + "/v1/predict/digits", files={"file": ("scan.pdf", pdf.read_bytes())},
                   headers=server.headers)
    assert r.status_code == 200, r.text
    expected = predictor.predict(pdf)  # the same page rendered in-process by the library
    assert r.json()["label"] == expected["label"] and r.json()["probs"] == pytest.approx(expected["probs"], abs=1e-6)
    r = httpx.post(server.url + "/v1/predict/digits", json={"row": {"a": 1}}, headers=server.headers)
    assert r.status_code == 400 and "upload" in r.json()["error"]["message"]


def test_predict_a_tabular_row(server, served_things):
    import firstepoch

    row = {"sepal length (cm)": 6.7, "sepal width (cm)": 3.0, "petal length (cm)": 5.2, "petal width (cm)": 2.3}
    r = httpx.post(server.url + "/v1/predict/iris", json={"row": row}, headers=server.headers)
    assert r.status_code == 200, r.text
    expected = firstepoch.load(served_things[0] / "iris").predict(row)  # the same bundle, in-process
    out = r.json()
    assert out["label"] == expected["label"] and out["probs"] == pytest.approx(expected["probs"], abs=1e-6)
    assert set(out["probs"]) == {"setosa", "versicolor", "virginica"}
    r = httpx.post(server.url + "/v1/predict/iris", files={"file": ("x.png", b"...")}, headers=server.headers)
    assert r.status_code == 400 and "JSON row" in r.json()["error"]["message"]


def test_search_and_ask_an_index(server):
    r = httpx.post(server.url + "/v1/search/docs", json={"query": "zebra herd near the lake", "k": 2},
                   headers=server.headers)
    assert r.status_code == 200
    results = r.json()["results"]
    assert results[0]["source"] == "reports/survey.pdf" and results[0]["page"] == 1 and len(results) == 2
    lines = []
    with httpx.stream("POST", server.url + "/v1/ask/docs", headers=server.headers, timeout=120,
                      json={"question": "How many animals were counted in the zebra herd?"}) as stream:
        lines = [json.loads(line) for line in stream.iter_lines() if line]
    assert lines[0]["answered"] and lines[0]["citations"][0]["source"] == "reports/survey.pdf"
    assert "counted 412 animals" in lines[0]["citations"][0]["text"]  # the passage that holds the answer
    assert lines[0]["citations"][0]["id"] == results[0]["id"] and "section" in lines[0]["citations"][0]
    # the quote: the cited passages' sentence closest to the question, word for word
    assert lines[0]["quote"]["number"] == 1 and "counted 412 animals" in lines[0]["quote"]["text"]
    assert any(line.get("text") for line in lines[1:-1])
    assert lines[-1]["done"] and isinstance(lines[-1]["supported"], bool)
    r = httpx.post(server.url + "/v1/ask/docs", headers=server.headers,
                   json={"question": "Who won the 1998 football world cup?", "stream": False})
    assert r.status_code == 200 and not r.json()["answered"] and r.json()["citations"] == []


def test_a_cited_pdf_page_as_an_image_with_the_passage_highlighted(server):
    import io

    import numpy as np
    from PIL import Image

    hits = httpx.post(server.url + "/v1/search/docs", json={"query": "zebra herd near the lake", "k": 1},
                      headers=server.headers).json()["results"]
    r = httpx.get(f"{server.url}/v1/page/docs/{hits[0]['id']}?width=400", headers=server.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    page = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    assert page.shape[1] == 400
    yellow = (page[..., 0] > 200) & (page[..., 1] > 180) & (page[..., 2] < 170)  # the highlight over white
    rows = np.flatnonzero(yellow.any(axis=1))
    assert yellow.sum() > 1000 and rows.max() - rows.min() < page.shape[0] / 2  # the passage's lines, not the page

    html = httpx.post(server.url + "/v1/search/docs", json={"query": "lighthouse keeper lamp", "k": 1},
                      headers=server.headers).json()["results"][0]
    assert html["source"] == "page.html"
    for path, status in ((f"/v1/page/docs/{html['id']}", 404), ("/v1/page/docs/987654321", 404),
                         (f"/v1/page/docs/{hits[0]['id']}?width=100000", 400), ("/v1/page/nope/1", 404)):
        r = httpx.get(server.url + path, headers=server.headers)
        assert r.status_code == status, (path, r.text)
        assert r.json()["error"]["message"]


def test_runs_health_and_metrics(server):
    runs = httpx.get(server.url + "/v1/runs", headers=server.headers).json()["runs"]
    assert "digits" in [r["name"] for r in runs]
    history = httpx.get(server.url + "/v1/runs/digits", headers=server.headers).json()["history"]
    assert len(history) == 3 and "valid_loss" in history[0]
    assert httpx.get(server.url + "/v1/runs/nope", headers=server.headers).status_code == 404
    health = httpx.get(server.url + "/health", headers=server.headers).json()
    assert health["status"] == "ok" and health["models"]["docs"]["kind"] == "index"
    metrics = httpx.get(server.url + "/metrics", headers=server.headers).text
    assert 'firstepoch_requests_total{route="/health",status="200"}' in metrics
    assert "firstepoch_decode_tokens_per_second" in metrics
