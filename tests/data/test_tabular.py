import csv
import json

import pytest
import torch
from sklearn.datasets import load_diabetes, load_iris

from firstepoch import FirstEpochError, Learner
from firstepoch.data import tabular
from firstepoch.data.loaders import DataLoaders, preprocessor_from_config


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def iris(tmp_path):
    d = load_iris()
    colors = ["red", "green", "blue", ""]  # a categorical column with gaps
    rows = [[*x, colors[i % 4], d.target_names[t]] for i, (x, t) in enumerate(zip(d.data, d.target))]
    rows[3][1] = ""  # a missing number
    return write_csv(tmp_path / "iris.csv", [*d.feature_names, "color", "species"], rows)


def test_classification_from_text_targets_with_encoding(iris):
    dls = DataLoaders.from_csv(iris, "species", seed=3)
    assert dls.task == "classification" and dls.classes == ["setosa", "versicolor", "virginica"]
    assert (dls.info["n_train"], dls.info["n_valid"]) == (120, 30)
    pre = dls.preprocessor
    assert "sepal width (cm)_missing" in pre.features and "color=<other>" in pre.features
    x_train = dls.train.dataset.x
    assert x_train[:, 0].mean().abs() < 1e-5 and x_train[:, 0].std() == pytest.approx(1, abs=0.01)
    again = DataLoaders.from_csv(iris, "species", seed=3)
    assert torch.equal(again.valid.dataset.x, dls.valid.dataset.x)


def test_unseen_and_missing_categories_go_to_the_other_slot(iris):
    pre = DataLoaders.from_csv(iris, "species").preprocessor
    row = {"sepal length (cm)": 5.0, "sepal width (cm)": "", "petal length (cm)": 1.0, "petal width (cm)": 0.2}
    other = pre.features.index("color=<other>")
    assert pre.encode({**row, "color": "purple"})[other] == 1
    assert pre.encode(row)[other] == 1
    assert pre.encode(row)[pre.features.index("sepal width (cm)_missing")] == 1


def test_a_saved_preprocessor_encodes_rows_bit_identically(iris):
    dls = DataLoaders.from_csv(iris, "species")
    reloaded = preprocessor_from_config(json.loads(json.dumps(dls.preprocessor.to_config())))
    rows = tabular.read_rows(iris)
    assert torch.equal(reloaded.encode_rows(rows), dls.preprocessor.encode_rows(rows))


def test_task_inference_and_override(tmp_path):
    small_ints = write_csv(tmp_path / "a.csv", ["x", "y"], [[i, i % 3] for i in range(40)])
    assert DataLoaders.from_csv(small_ints, "y").task == "classification"
    assert DataLoaders.from_csv(small_ints, "y").classes == ["0", "1", "2"]
    assert DataLoaders.from_csv(small_ints, "y", task="regression").task == "regression"
    d = load_diabetes()
    floats = write_csv(tmp_path / "d.csv", [*d.feature_names, "progress"], [[*x, t] for x, t in zip(d.data, d.target)],
                       delimiter=";")
    dls = DataLoaders.from_csv(floats, "progress")
    assert dls.task == "regression" and dls.n_out == 1 and dls.train.dataset.y.dtype == torch.float32


def test_an_mlp_learns_iris(iris):
    learn = Learner(DataLoaders.from_csv(iris, "species"), "mlp", progress=False)
    assert learn.fit_one_cycle(10, 1e-2)[-1]["accuracy"] >= 0.9


@pytest.mark.parametrize("make, target, message", [
    (lambda p: None, "species", "no such CSV file"),
    (lambda p: p.write_text(""), "species", "empty file"),
    (lambda p: write_csv(p, ["a", "species"], [[1, "x"]] * 10), "specie",
     r"no column 'specie'.*did you mean 'species'"),
    (lambda p: write_csv(p, ["a", "species"], [[i, "x"] for i in range(10)]), "species", "single value"),
    (lambda p: p.write_text("a,species\n1,x\n2,y,3\n"), "species", "line 3: 3 fields but the header has 2"),
    (lambda p: write_csv(p, ["species"], [["x"], ["y"]] * 5), "species", "no feature columns"),
])
def test_bad_csvs_are_one_clear_error_naming_the_file(tmp_path, make, target, message):
    path = tmp_path / "data.csv"
    make(path)
    with pytest.raises(FirstEpochError, match=message) as err:
        DataLoaders.from_csv(path, target)
    assert "data.csv" in str(err.value)
