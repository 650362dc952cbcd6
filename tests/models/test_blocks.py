import pytest
import torch

from firstepoch import FirstEpochError
from firstepoch.models import build, cnn, create_model, linear, mlp


@pytest.mark.parametrize("make, x", [
    (lambda: linear(6, 2), torch.randn(4, 6)),
    (lambda: mlp(6, 3, hidden=[8, 5], activation="gelu", dropout=0.1), torch.randn(4, 6)),
    (lambda: cnn(1, 10, widths=[8, 16]), torch.randn(4, 1, 16, 16)),
    (lambda: create_model("resnet10t", [3, 32, 32], 4), torch.randn(2, 3, 32, 32)),
])
def test_bricks_rebuild_from_their_spec(make, x):
    torch.manual_seed(0)
    model = make().eval()
    twin = build(model.spec).eval()
    twin.load_state_dict(model.state_dict())
    assert torch.equal(model(x), twin(x))
    assert model(x).shape[0] == x.shape[0]


def test_create_model_sizes_the_model_from_the_data():
    assert create_model("mlp", [1, 8, 8], 10)(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert create_model("cnn", [3, 20, 20], 2)(torch.randn(3, 3, 20, 20)).shape == (3, 2)
    assert create_model("resnet10t", [1, 32, 32], 5).spec == {"arch": "timm", "name": "resnet10t",
                                                              "in_channels": 1, "n_out": 5}


def test_unknown_names_suggest_real_ones():
    with pytest.raises(FirstEpochError, match="unknown architecture 'resnet1000'; did you mean"):
        create_model("resnet1000", [3, 32, 32], 2)
    with pytest.raises(FirstEpochError, match="unknown activation 'relu6'"):
        mlp(4, 2, activation="relu6")
