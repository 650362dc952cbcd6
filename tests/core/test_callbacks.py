"""Callbacks that are not covered through the Learner's own tests."""
import torch

from firstepoch import DataLoaders, Learner


def test_recalibrate_batchnorm_sets_running_stats_to_the_training_batches_average(digits):
    from torch import nn

    from firstepoch.core.callbacks import RecalibrateBatchNorm

    x, y = digits
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    dls = DataLoaders.from_tensors(x[:256], y[:256], batch_size=32)
    learn = Learner(dls, model, progress=False, callbacks=[RecalibrateBatchNorm(max_batches=4)])
    learn.fit(1, 1e-3)
    with torch.no_grad():
        batches = [model[0](xb) for xb, _ in list(dls.train)[:4]]
    expected = torch.stack([b.mean(0) for b in batches]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected, atol=1e-5, rtol=1e-4)
