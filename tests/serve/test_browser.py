"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright. It chats (and sees the
answer stream in), classifies an uploaded image, and saves a screenshot as a test artifact."""
import os
import shutil
from pathlib import Path

import pytest

from tests.retrieval.conftest import docs_folder  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("FIRSTEPOCH_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def page(server):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it with apt-get)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server.url + "/")
        page.fill("#key", server.api_key)
        page.dispatch_event("#key", "change")
        yield page
        browser.close()


def test_chat_streams_an_answer(page):
    page.wait_for_function("document.querySelectorAll('#chat-model option').length > 0")
    page.fill("#temp", "0")
    page.fill("#prompt", "Write one sentence about the sea.")
    # every text the answer shows, as the page shows it: a MutationObserver notes each distinct one
    page.evaluate("""() => {
        window.shown = [];
        new MutationObserver(() => {
            const body = document.querySelector('.msg.assistant:last-child .body');
            const text = body ? body.textContent : '';
            if (text && text !== window.shown[window.shown.length - 1]) window.shown.push(text);
        }).observe(document.querySelector('#log'), {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#send")
    page.wait_for_selector(".msg.assistant .body:not(:empty)", timeout=60_000)
    page.wait_for_function("document.querySelector('#stop').disabled", timeout=120_000)
    final = page.text_content(".msg.assistant .body")
    shown = page.evaluate("window.shown")
    # streamed: the answer was seen growing through several partial texts before the whole one
    assert len(final.strip()) > 10 and shown[-1] == final, shown
    assert len(shown) >= 4 and all(len(a) < len(b) for a, b in zip(shown, shown[1:])), shown
    assert all(final.startswith(partial.rstrip()) for partial in shown[:-1]), shown
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)


def test_upload_an_image_and_see_a_label(page, served_things):
    import firstepoch

    tmp, _, digits = served_things
    image = next((digits / "test" / "7").glob("*.png"))
    page.click("nav button[data-tab=classify]")
    page.wait_for_function("document.querySelectorAll('#predict-model option').length > 0")
    page.select_option("#predict-model", "digits")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#label", timeout=30_000)
    expected = firstepoch.load(tmp / "digits-model").predict(image)  # the same bundle, in-process
    assert page.inner_text("#label") == expected["label"]
    rows = page.locator("table.probs tr")
    assert rows.count() == 5
    top5 = sorted(expected["probs"].items(), key=lambda item: -item[1])[:5]
    shown = [rows.nth(i).locator("td").all_inner_texts() for i in range(5)]
    assert [(row[0], row[2]) for row in shown] == [(c, f"{p * 100:.1f}%") for c, p in top5], shown
    page.screenshot(path=str(ARTIFACTS / "classify.png"), full_page=True)


def test_ask_shows_citations_that_open_their_passage(page):
    page.click("nav button[data-tab=ask]")
    page.wait_for_function("document.querySelectorAll('#index option').length > 0")
    page.fill("#question", "How many animals were counted in the zebra herd?")
    page.click("#ask-go")
    page.wait_for_selector("#sources .cite", timeout=60_000)
    assert "reports/survey.pdf, page 1" in page.inner_text("#sources")
    page.wait_for_selector("#quote", state="visible", timeout=10_000)
    assert "412 animals" in page.inner_text("#quote")  # the passages' sentence that answers, word for word
    page.click("#sources .cite >> nth=0")
    assert "412 animals" in page.inner_text("#passage")
    # and the PDF page itself, drawn by the server with the passage highlighted
    page.wait_for_function("document.querySelector('#page').style.display === 'block' && "
                           "document.querySelector('#page').naturalWidth >= 100", timeout=30_000)
    page.wait_for_function("document.querySelector('#answer').textContent.trim().length > 0", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "ask.png"), full_page=True)
