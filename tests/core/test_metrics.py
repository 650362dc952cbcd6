"""Metrics accumulated over batches equal scikit-learn's on the whole set."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from firstepoch import FirstEpochError
from firstepoch.core.metrics import get_metric


def accumulate(name, pred, target, batch=7):
    m = get_metric(name)
    m.reset()
    for i in range(0, len(target), batch):
        m.accumulate(pred[i:i + batch], target[i:i + batch])
    return m.value


@pytest.fixture
def classification():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, 5, generator=g)
    target = torch.randint(0, 5, (100,), generator=g)
    target[:40] = logits[:40].argmax(1)  # make it better than chance
    return logits, target


def test_classification_metrics_match_sklearn(classification):
    logits, target = classification
    y, p = target.numpy(), logits.argmax(1).numpy()
    assert accumulate("accuracy", logits, target) == pytest.approx(skm.accuracy_score(y, p))
    assert accumulate("error_rate", logits, target) == pytest.approx(1 - skm.accuracy_score(y, p))
    assert accumulate("f1", logits, target) == pytest.approx(skm.f1_score(y, p, average="macro"))
    top3 = skm.top_k_accuracy_score(y, logits.numpy(), k=3, labels=np.arange(5))
    assert accumulate("top3_accuracy", logits, target) == pytest.approx(top3)


def test_regression_metrics_match_sklearn():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(50, 1, generator=g), torch.randn(50, generator=g)
    assert accumulate("rmse", pred, target) == pytest.approx(skm.mean_squared_error(target, pred[:, 0]) ** 0.5)
    assert accumulate("mae", pred, target) == pytest.approx(skm.mean_absolute_error(target, pred[:, 0]))


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(FirstEpochError, match="unknown metric 'auc'; choose from accuracy"):
        get_metric("auc")
