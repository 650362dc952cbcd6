import math
from collections import Counter

import numpy as np
import pytest
import torch

from firstepoch import DataLoaders, FirstEpochError, Learner
from firstepoch.data import samples


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """The first 60,000 characters of the bundled Shakespeare."""
    full = samples.shakespeare(tmp_path_factory.mktemp("s") / "shakespeare.txt").read_text()
    path = tmp_path_factory.mktemp("t") / "play.txt"
    path.write_text(full[:60_000])
    return path


def test_windows_are_next_token_pairs_split_by_position(text_file, tmp_path):
    dls = DataLoaders.from_text(text_file, context=32, batch_size=8, steps_per_epoch=5, cache_dir=tmp_path)
    train, valid = dls.train.dataset, dls.valid.dataset
    x, y = train[(0, 3)]
    assert x.shape == y.shape == (32,) and torch.equal(x[1:], y[:-1])
    assert dls.preprocessor.tokenizer.decode(x.tolist()) in text_file.read_text()
    assert train.end == valid.start == dls.info["n_train"]  # the valid text comes after the train text
    assert train.start + train.span + 32 + 1 == train.end  # the last possible training window ends there
    assert torch.equal(train[(0, 3)][0], train[(0, 3)][0]) and not torch.equal(train[(0, 3)][0], train[(1, 3)][0])


def test_the_token_file_is_a_reused_memory_map(text_file, tmp_path):
    a = DataLoaders.from_text(text_file, context=16, cache_dir=tmp_path)
    assert isinstance(a.train.dataset.tokens, np.memmap)
    [bin_file] = tmp_path.glob("*.bin")
    stamp = bin_file.stat().st_mtime_ns
    b = DataLoaders.from_text(text_file, context=16, cache_dir=tmp_path)
    assert bin_file.stat().st_mtime_ns == stamp and b.info["tokens"] == a.info["tokens"]


def test_bytes_that_are_not_utf8_are_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait \xff\xfe " * 40)
    with pytest.warns(UserWarning, match="120 character"):  # 3 undecodable bytes x 40
        dls = DataLoaders.from_text(tmp_path / "bad.txt", context=16, batch_size=4, steps_per_epoch=2,
                                    cache_dir=tmp_path)
    assert "\ufffd" in dls.preprocessor.tokenizer.chars


def test_a_corpus_too_short_for_the_context_says_how_many_tokens(tmp_path):
    (tmp_path / "short.txt").write_text("To be, or not to be.")
    with pytest.raises(FirstEpochError, match=r"20 tokens, but 65 are needed.*lower --context"):
        DataLoaders.from_text(tmp_path / "short.txt", context=64, cache_dir=tmp_path)


def test_a_tiny_gpt_learns_real_text_well_below_its_unigram_entropy(text_file, tmp_path):
    text = text_file.read_text()[:20_000]
    (tmp_path / "small.txt").write_text(text)
    counts = Counter(text)
    unigram = -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())  # nats per character
    dls = DataLoaders.from_text(tmp_path / "small.txt", context=32, batch_size=16, steps_per_epoch=100,
                                cache_dir=tmp_path)
    torch.manual_seed(0)
    learn = Learner(dls, "transformer", progress=False)
    learn.fit_one_cycle(3, 3e-3)
    assert learn.recorder.history[-1]["train_loss"] < unigram - 0.8  # unigram is about 3.3 nats


def test_gpt_training_resumes_bit_exactly(text_file, tmp_path):
    from firstepoch import Run, TrainingInterrupted
    from firstepoch.models.transformer import Transformer, TransformerConfig
    from tests.core.test_checkpoint import InterruptAt

    dls = DataLoaders.from_text(text_file, context=16, batch_size=8, steps_per_epoch=10, cache_dir=tmp_path)

    def learner(run=None, callbacks=()):
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=dls.n_out, dim=32, n_layers=1, n_heads=2, context=16,
                                              dropout=0.1))  # dropout: the RNG state must travel too
        return Learner(dls, model, run=run, progress=False, callbacks=list(callbacks))

    reference = learner()
    reference.fit_one_cycle(3, 3e-3)
    with pytest.raises(TrainingInterrupted):
        learner(Run.create(tmp_path / "runs", "gpt"), [InterruptAt(15)]).fit_one_cycle(3, 3e-3)
    resumed = learner(Run.create(tmp_path / "runs", "gpt"))
    resumed.fit_one_cycle(3, 3e-3, resume=True)
    assert resumed.recorder.losses == reference.recorder.losses
