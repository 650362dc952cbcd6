"""Our BERT encoder and pooling against sentence-transformers itself, on the same model folder."""
import numpy as np
import pytest

TEXTS = ["A man is eating food.", "Ünïcödé façade — naïve café in 東京", "x", "",
         "The Bell Rock lighthouse keeper lit the lamp at dusk.",
         "def fit(self, epochs): return self.learner.fit_one_cycle(epochs, 3e-3)",
         "Stocks fell sharply on Monday after the central bank raised interest rates by half a point. " * 6,
         "   leading and trailing spaces   ", "UPPER CASE and lower case", "émoji 🙂 and symbols ©®™"]


def test_vectors_match_sentence_transformers(embedder):
    from sentence_transformers import SentenceTransformer

    from firstepoch.retrieval.embed import resolve_embedder

    reference = SentenceTransformer(str(resolve_embedder(None)), device="cpu").encode(TEXTS, convert_to_numpy=True)
    ours = embedder.embed(TEXTS)
    assert ours.shape == reference.shape == (len(TEXTS), 384)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # the model's Normalize module


def test_batching_does_not_change_vectors(embedder):
    """Padding inside a batch of mixed lengths must not leak into a text's vector."""
    together = embedder.embed(TEXTS, batch_size=4)
    alone = np.stack([embedder.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_meaning_is_close_and_topics_apart(embedder):
    a, b, c = embedder.embed(["How do I bake bread at home?", "A recipe for homemade bread",
                              "The stock market crashed today"])
    assert a @ b > 0.5 > a @ c


def test_too_long_text_warns_and_is_cut(embedder):
    with pytest.warns(UserWarning, match="longer than 256 tokens"):
        v = embedder.embed(["word " * 400])
    assert v.shape == (1, 384)


def test_public_embed_function():
    from firstepoch.retrieval import embed

    assert embed("hello").shape == (1, 384)
    with pytest.raises(Exception, match="no such embedding model"):
        embed("hello", model="/no/such/model")
