"""Perplexity of the bundled SmolLM2 on a real text, against the same number worked out from llama.cpp's logits
(llama-cpp-python, logits_all) over the same tokens, windows and scored positions."""
from pathlib import Path

import numpy as np
import pytest

from firstepoch import FirstEpochError
from firstepoch.llm import perplexity

WINDOW, WINDOWS = 64, 3


def real_text() -> str:
    """scikit-learn's description of the iris data: plain English with numbers and a table, always installed."""
    import sklearn.datasets

    return (Path(sklearn.datasets.__file__).parent / "descr" / "iris.rst").read_text(encoding="utf-8")


def llama_cpp_losses(llama, ids: list[int], window: int, windows: int) -> np.ndarray:
    """(windows, window - 1): the negative log-likelihood of each next token in each window, from llama.cpp's
    logits in fp64, each window evaluated on its own as firstepoch's perplexity does."""
    losses = []
    for start in list(range(0, len(ids) - window + 1, window))[:windows]:
        chunk = ids[start:start + window]
        llama.reset()
        llama.eval(chunk)
        logits = np.asarray(llama.scores[:window], dtype=np.float64)[:-1]  # (window - 1, vocab)
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-log_probs[np.arange(window - 1), chunk[1:]])
    return np.stack(losses)


@pytest.mark.slow
def test_perplexity_equals_llama_cpp_on_the_same_windows(smollm, llama):
    text = real_text()
    ids = smollm.encode(text)
    assert ids == llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert len(ids) >= WINDOW * WINDOWS  # three whole windows, so the windowing is what is compared
    ours = perplexity(smollm, text, window=WINDOW, max_windows=WINDOWS)
    assert ours["windows"] == WINDOWS and ours["tokens"] == WINDOWS * WINDOW // 2
    losses = llama_cpp_losses(llama, ids, WINDOW, WINDOWS)
    second_half = losses[:, WINDOW // 2 - 1:]  # the prediction of each token of the window's second half
    reference = float(np.exp(second_half.mean()))
    assert ours["perplexity"] == pytest.approx(reference, rel=1e-4)
    assert 2 < reference < 100  # a small instruct model on plain English: surprised, not lost
    # the tolerance tells windowing apart: scoring every position, or the first window only, differs far more
    for other in (np.exp(losses.mean()), np.exp(second_half[0].mean())):
        assert abs(other / reference - 1) > 5e-3, (other, reference)  # 50 times the tolerance


def test_a_text_shorter_than_one_window_is_refused(smollm):
    with pytest.raises(FirstEpochError, match="at least one window of 128"):
        perplexity(smollm, "Too short a text.", window=128)
