"""Callbacks that are not covered through the Learner's own tests."""
import torch

from firstepoch import DataLoaders, Learner


def test_recalibrate_batchnorm_sets_running_stats_to_the_epochs_batch_average(digits):
    from torch import nn

    from firstepoch.core.callbacks import RecalibrateBatchNorm

    x, y = digits
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model[1].running_mean.fill_(5.0)  # stale statistics, as a pretrained model brings
    seen = []
    model[1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().mean(0)) if m.training else None)
    dls = DataLoaders.from_tensors(x[:320], y[:320], batch_size=32)  # 256 training rows: 8 full batches
    learn = Learner(dls, model, progress=False, callbacks=[RecalibrateBatchNorm()])
    learn.fit(1, 1e-3)
    expected = torch.stack(seen).mean(0)  # the batch means of this epoch, with the weights of their time
    torch.testing.assert_close(model[1].running_mean, expected, atol=1e-5, rtol=1e-4)
    assert model[1].momentum == 0.1  # restored after the epoch
