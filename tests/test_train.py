"""`firstepoch.train` called from Python: the run folder it leaves is the one `firstepoch train` leaves."""
import json

import pytest
from rich.console import Console

import firstepoch
from firstepoch.errors import FirstEpochError
from firstepoch.train import train_images, train_tabular
from tests.test_cli import digits_dir, iris_csv  # noqa: F401  (the fixtures)

QUIET = Console(quiet=True)
SETOSA = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTEPOCH_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_train_tabular_writes_the_run_and_returns_it(iris_csv, runs):  # noqa: F811
    run = train_tabular(iris_csv, "species", epochs=2, name="iris", console=QUIET)
    assert run.dir == runs / "iris" and (run.bundle_dir / "model.safetensors").exists()
    assert (run.dir / "loss.png").exists() and len(run.history()) == 2
    info = run.info()
    assert info["status"] == "done" and info["bundle"] == str(run.bundle_dir) and info["test"] is None
    assert info["config"] == {"data": str(iris_csv), "target": "species", "arch": "mlp", "epochs": 2, "lr": None,
                              "seed": 42}
    assert firstepoch.load(run.bundle_dir).predict(SETOSA)["label"] == "setosa"


def test_train_tabular_in_python_trains_what_the_command_trains(iris_csv, tmp_path, runs):  # noqa: F811
    from tests.cli_runner import run_commands

    [(code, _, stderr)] = run_commands([["train", "tabular", iris_csv, "--target", "species", "--epochs", 2,
                                         "--name", "cli"]], env={"FIRSTEPOCH_RUNS": str(tmp_path / "cli-runs")})
    assert code == 0, stderr
    ours = train_tabular(iris_csv, "species", epochs=2, name="python", console=QUIET).history()
    by_cli = [json.loads(line) for line in (tmp_path / "cli-runs" / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert len(ours) == len(by_cli) == 2
    for mine, theirs in zip(ours, by_cli):
        assert mine["valid_loss"] == pytest.approx(theirs["valid_loss"], rel=1e-4)
        assert mine["accuracy"] == pytest.approx(theirs["accuracy"], abs=1e-6)


def test_train_images_evaluates_the_test_split_and_records_it(digits_dir, runs):  # noqa: F811
    run = train_images(digits_dir / "train", arch="cnn", epochs=1, size=12, flip=False, test_pct=0.2, name="digits",
                       console=QUIET)
    info = run.info()
    assert set(info["test"]) >= {"valid_loss", "accuracy"} and info["config"]["pretrained"] is None
    assert info["config"]["size"] == 12 and (run.bundle_dir / "firstepoch.json").exists()
    bundle = json.loads((run.bundle_dir / "firstepoch.json").read_text())
    assert bundle["data"]["n_test"] > 0 and bundle["input_shape"] == [1, 12, 12]


def test_train_images_falls_back_to_a_cnn_without_the_bundled_weights(digits_dir, runs, monkeypatch):  # noqa: F811
    import firstepoch.models.vision as vision

    monkeypatch.setattr(vision, "has_offline_weights", lambda arch: False)
    with pytest.warns(UserWarning, match="weights are not installed"):
        run = train_images(digits_dir / "train", epochs=1, size=12, flip=False, name="fallback", console=QUIET)
    config = run.info()["config"]
    assert config["arch"] == "cnn" and config["pretrained"] is None and config["size"] == 12


def test_bad_arguments_fail_before_a_run_folder_is_made(iris_csv, digits_dir, runs):  # noqa: F811
    with pytest.raises(FirstEpochError, match="--resume needs --name"):
        train_tabular(iris_csv, "species", resume=True)
    with pytest.raises(FirstEpochError, match="--opt 'lion': choose from"):
        train_tabular(iris_csv, "species", opt="lion")
    with pytest.raises(FirstEpochError, match="--weights needs a timm"):
        train_images(digits_dir / "train", arch="cnn", weights="w.safetensors")
    assert not runs.exists()


def test_train_takes_dataloaders_of_your_own(runs):
    import torch
    from sklearn.datasets import load_digits

    from firstepoch.data import DataLoaders
    from firstepoch.train import train

    d = load_digits()
    dls = DataLoaders.from_tensors(torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target))
    run = train(dls, "mlp", "tensors", 2, 1e-2, name="tensors", console=QUIET)  # no counts in dls.info: "?"
    assert run.info()["status"] == "done" and run.history()[-1]["accuracy"] > 0.8


def test_train_refuses_a_model_it_could_not_export_before_training(runs):
    import torch

    from firstepoch.data import DataLoaders
    from firstepoch.train import train

    dls = DataLoaders.from_tensors(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    with pytest.raises(FirstEpochError, match="needs a model made by firstepoch.models"):
        train(dls, torch.nn.Linear(4, 2), "own", 1, 1e-2, console=QUIET)
    assert not runs.exists()
