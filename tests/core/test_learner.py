import warnings

import pytest
import torch
from torch import nn

from firstepoch import DataLoaders, EarlyStopping, FirstEpochError, Learner
from firstepoch.core.callbacks import Callback, GradientClip
from tests.conftest import linear_data, record_output_dtypes


def linear_learner(**kwargs):
    x, y = linear_data()
    dls = DataLoaders.from_tensors(x, y, batch_size=kwargs.pop("batch_size", 16))
    return Learner(dls, kwargs.pop("model", "linear"), progress=False, **kwargs)


def test_fit_learns_a_line():
    learn = linear_learner(opt="sgd", lr=0.05, wd=0.0)
    history = learn.fit(8)
    assert history[-1]["valid_loss"] < 0.01 < history[0]["train_loss"]
    layer = learn.model[1]
    assert layer.weight.item() == pytest.approx(3, abs=0.05)
    assert layer.bias.item() == pytest.approx(-2, abs=0.05)
    assert learn.predict(torch.tensor([1.0]))["value"] == pytest.approx(1.0, abs=0.1)


def test_classifier_on_real_digits(digits):
    x, y = digits
    dls = DataLoaders.from_tensors(x, y, batch_size=64)
    learn = Learner(dls, "mlp", metrics=["accuracy", "f1", "top3_accuracy"], progress=False)
    learn.fit_one_cycle(3, 1e-2)
    result = learn.evaluate()
    assert result["accuracy"] > 0.93
    assert result["top3_accuracy"] >= result["accuracy"]
    pred = learn.predict(x[0])
    assert pred["label"] == "0" and pred["probability"] > 0.5 and set(pred["probs"]) == {str(i) for i in range(10)}


def test_training_step_equals_hand_written_pytorch():
    """One epoch through the Learner gives bit-identical weights to a plain PyTorch loop over the same batches."""
    learn = linear_learner(model="mlp", opt="sgd", lr=0.01, wd=0.0)
    reference = type(learn.model)(*[m for m in __import__("copy").deepcopy(list(learn.model))])
    opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0)
    dl = learn.dls.train
    dl.sampler.set_epoch(0)
    reference.train()
    for xb, yb in dl:
        loss = nn.functional.mse_loss(reference(xb).view_as(yb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
    learn.fit(1)
    for a, b in zip(learn.model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_one_cycle_schedule_warms_up_then_anneals():
    class LrLog(Callback):
        def before_step(self):
            self.lrs = getattr(self, "lrs", []) + [self.learn.opt.param_groups[0]["lr"]]

    log = LrLog()
    learn = linear_learner(callbacks=[log])
    learn.fit_one_cycle(4, 0.1)
    peak = max(log.lrs)
    assert peak == pytest.approx(0.1, rel=0.05)
    assert log.lrs[0] == pytest.approx(0.1 / 25, rel=0.05)
    assert log.lrs[-1] < 1e-3 and log.lrs.index(peak) < len(log.lrs) / 2


def test_gradient_accumulation_matches_a_bigger_batch():
    big = linear_learner(batch_size=32, opt="sgd", lr=0.1)
    small = linear_learner(batch_size=16, opt="sgd", lr=0.1, accumulate=2)
    small.dls.train.sampler.seed = big.dls.train.sampler.seed
    big.fit(1)
    small.fit(1)
    for a, b in zip(big.model.parameters(), small.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_gradient_clipping_bounds_the_norm():
    class Norm(Callback):
        order = 30  # after GradientClip

        def after_backward(self):
            self.norm = torch.nn.utils.get_total_norm([p.grad for p in self.learn.model.parameters()])

    norm = Norm()
    learn = linear_learner(lr=1.0, callbacks=[GradientClip(0.01), norm])
    learn.fit(1)
    assert norm.norm <= 0.01 + 1e-6


def test_a_time_budget_ends_the_fit_after_a_last_validation_and_anneals_by_the_clock(tmp_path):
    import json

    from firstepoch import TimeBudget

    class LastLr(Callback):
        def before_step(self):
            self.lr = self.learn.opt.param_groups[0]["lr"]

    last = LastLr()
    learn = linear_learner(callbacks=[last], run=tmp_path / "run")
    history = learn.fit_one_cycle(100_000, 0.1, callbacks=[TimeBudget(1.0)])
    assert "time budget of 1 s used" in learn.stop_reason
    assert 1 <= len(history) < 100_000 and history[-1]["valid_loss"] < history[0]["train_loss"]
    assert last.lr < 0.1 / 100  # the 1cycle schedule reached its end with the clock, not with the steps
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == history  # the last, shortened epoch is logged too


def test_early_stopping_stops():
    learn = linear_learner(lr=1e-6, callbacks=[EarlyStopping(patience=1, min_delta=10.0)])
    history = learn.fit(10)
    assert len(history) == 2
    assert "early stopping" in learn.stop_reason


def test_nan_guard_names_the_step_and_suggests_a_lower_lr():
    learn = linear_learner(opt="sgd", lr=1e6)
    with pytest.raises(FirstEpochError, match=r"batch \d+ .*lower learning rate"):
        learn.fit(3)


def test_out_of_memory_says_what_to_lower():
    class Hungry(nn.Module):
        spec = None

        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    x, y = linear_data()
    learn = Learner(DataLoaders.from_tensors(x, y, batch_size=16), nn.Sequential(Hungry(), nn.Linear(1, 1)),
                    progress=False)
    with pytest.raises(FirstEpochError, match="out of memory.*batch size 16.*--batch-size 8"):
        learn.fit(1)


def test_compile_failure_falls_back_with_one_warning(monkeypatch):
    def broken_compile(model, **kwargs):
        def run(x):
            raise RuntimeError("no C compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    learn = linear_learner(compile=True, lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = learn.fit(2)
    messages = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert len(messages) == 1 and "no C compiler" in messages[0]
    assert history[-1]["valid_loss"] < history[0]["train_loss"]


@pytest.mark.parametrize("precision", ["bf16", "mixed"])
def test_mixed_precision_bf16_trains_on_cpu(digits, precision):
    """The layers really compute in bf16 (an autocast that silently fell back to fp32 would still learn),
    the weights stay fp32, and the model still learns."""
    x, y = digits
    learn = Learner(DataLoaders.from_tensors(x, y), "mlp", precision=precision, progress=False)
    seen, hooks = record_output_dtypes(learn.model)
    history = learn.fit_one_cycle(2, 1e-2)
    for hook in hooks:
        hook.remove()
    assert len(seen) > 100 and set(seen) == {torch.bfloat16}, set(seen)  # train and valid batches alike
    assert {p.dtype for p in learn.model.parameters()} == {torch.float32}
    assert history[-1]["accuracy"] > 0.85
    with torch.no_grad():  # outside fit there is no autocast: plain fp32 again
        assert learn.model(x[:4]).dtype == torch.float32


def test_lr_find_suggests_a_sane_lr_and_restores_the_model(tmp_path, digits):
    x, y = digits
    learn = Learner(DataLoaders.from_tensors(x, y), "mlp", progress=False)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    lr = learn.lr_find(plot=tmp_path / "lr.png")
    assert 1e-5 < lr < 1
    assert (tmp_path / "lr.png").stat().st_size > 1000
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert learn.recorder.history == []


def test_unknown_names_are_clear_errors():
    x, y = linear_data()
    dls = DataLoaders.from_tensors(x, y)
    with pytest.raises(FirstEpochError, match="unknown optimizer 'adamm'"):
        Learner(dls, "linear", opt="adamm")
    with pytest.raises(FirstEpochError, match="unknown metric"):
        Learner(dls, "linear", metrics=["acuracy"])
    with pytest.raises(FirstEpochError, match="needs images"):
        Learner(dls, "cnn")


def test_same_seed_same_result():
    a, b = linear_learner(model="mlp"), linear_learner(model="mlp")
    history = a.fit(2)
    b.fit(2)
    assert history[-1]["valid_loss"] < history[0]["train_loss"]  # it trained
    assert len(a.recorder.losses) == 2 * a.iters_per_epoch > 0 and a.recorder.losses == b.recorder.losses
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
