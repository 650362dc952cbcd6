"""Per-class precision, recall and F1 from a confusion matrix, checked by hand."""
import pytest
import torch

from firstepoch.core.interpret import per_class


def test_per_class_rows_from_a_confusion_matrix():
    confusion = torch.tensor([[8, 2, 0],   # true cat: 8 right, 2 called dog
                              [1, 5, 4],   # true dog
                              [0, 0, 0]])  # no true bird, never predicted
    cat, dog, bird = per_class(confusion, ["cat", "dog", "bird"])
    f1 = pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert cat == {"class": "cat", "precision": 8 / 9, "recall": 0.8, "f1": f1, "support": 10}
    assert dog["precision"] == 5 / 7 and dog["recall"] == 0.5 and dog["support"] == 10
    assert bird == {"class": "bird", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
