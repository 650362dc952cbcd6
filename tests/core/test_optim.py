"""Muon: which parameters it takes, and that it trains a small GPT on real text further than AdamW."""
import pytest
import torch

from firstepoch import FirstEpochError, Learner
from firstepoch.core.optim import muon_groups, newton_schulz
from firstepoch.data import DataLoaders, samples
from firstepoch.models.transformer import Transformer, TransformerConfig


def test_muon_takes_the_hidden_matrices_and_leaves_embeddings_output_and_norms_to_adamw():
    for tied in (True, False):
        model = Transformer(TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, context=16,
                                              tie_embeddings=tied))
        muon, rest = muon_groups(model)
        names = {id(p): name for name, p in model.named_parameters()}
        hidden = {names[id(p)] for p in muon["params"]}
        assert hidden == {f"layers.{i}.{m}.{w}_proj.weight" for i in range(2)
                          for m, ws in (("attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for w in ws}
        others = {names[id(p)] for p in rest["params"]}
        assert "embed_tokens.weight" in others and "norm.weight" in others
        assert ("lm_head.weight" in others) == (not tied)  # tied: the same tensor as the embedding


def test_newton_schulz_makes_the_singular_values_about_one():
    torch.manual_seed(0)
    g = torch.randn(96, 32) * torch.linspace(0.2, 2.0, 32)  # columns of different scales, as gradients have
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(newton_schulz(g, steps=3))
    assert before.max() / before.min() > 10
    assert after.min() > 0.6 and after.max() < 1.25


@pytest.mark.slow
def test_muon_trains_a_small_gpt_further_than_adamw_in_the_same_steps(tmp_path):
    text = samples.shakespeare().read_text(encoding="utf-8")[:60_000]
    corpus = tmp_path / "plays.txt"
    corpus.write_text(text, encoding="utf-8")
    losses = {}
    for opt in ("adamw", "muon"):
        dls = DataLoaders.from_text(corpus, context=32, batch_size=16, steps_per_epoch=60, cache_dir=tmp_path)
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=dls.n_out, dim=64, n_layers=2, n_heads=4, context=32))
        learn = Learner(dls, model, opt=opt, progress=False)
        learn.fit_one_cycle(3, 3e-3)
        losses[opt] = learn.recorder.history[-1]["valid_loss"]
    assert losses["muon"] < losses["adamw"] - 0.05, losses


def test_fine_tuning_with_muon_is_refused_with_a_clear_line(digits):
    from firstepoch import DataLoaders
    from firstepoch.models import mlp

    x, y = digits
    learn = Learner(DataLoaders.from_tensors(x[:64], y[:64], batch_size=32), mlp(64, 10, hidden=[32]), opt="muon",
                    progress=False)
    with pytest.raises(FirstEpochError, match="not muon"):
        learn.freeze()
