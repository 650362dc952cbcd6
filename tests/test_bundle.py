import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import firstepoch
from firstepoch import DataLoaders, FirstEpochError, Learner
from firstepoch.bundle import CONFIG_FILE


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    x, y = digits
    torch.manual_seed(0)
    learn = Learner(DataLoaders.from_tensors(x, y), "mlp", progress=False)
    learn.fit_one_cycle(2, 1e-2)
    path = learn.export(tmp_path_factory.mktemp("bundle") / "digits")
    return learn, path


def test_export_writes_safetensors_and_a_readable_config(trained):
    learn, path = trained
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, "model.safetensors"]
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["task"] == "classification" and config["classes"] == [str(i) for i in range(10)]
    assert config["model"]["arch"] == "mlp" and config["preprocessing"]["kind"] == "tensor"
    assert config["metrics"]["accuracy"] == learn.recorder.history[-1]["accuracy"]
    assert config["data"]["fingerprint"] and config["versions"]["torch"] == torch.__version__


def test_a_fresh_process_predicts_exactly_what_the_learner_gave(trained, digits, tmp_path):
    learn, path = trained
    x, _ = digits
    torch.save(x[:5].clone(), tmp_path / "items.pt")
    code = ("import json, sys, torch, firstepoch\n"
            "torch.set_num_threads(1)\n"  # as the test process: a different thread count sums in another order
            "p = firstepoch.load(sys.argv[1], device=sys.argv[3])\n"
            "items = torch.load(sys.argv[2], weights_only=True)\n"
            "print(json.dumps([p.predict(i) for i in items]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "items.pt"), str(learn.device)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert json.loads(out.stdout) == [learn.predict(i) for i in x[:5]]


def test_export_replaces_an_old_bundle_whole(trained, tmp_path):
    learn, _ = trained
    path = tmp_path / "b"
    learn.export(path)
    (path / "stale.txt").write_text("from an older export")
    learn.export(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert not (path / "stale.txt").exists()


def test_a_model_without_a_spec_cannot_be_exported(digits, tmp_path):
    x, y = digits
    learn = Learner(DataLoaders.from_tensors(x, y), torch.nn.Sequential(torch.nn.Linear(64, 10)), progress=False)
    with pytest.raises(FirstEpochError, match="export needs a model made by firstepoch.models"):
        learn.export(tmp_path / "b")


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "thing: no such model file, folder or name"),
    (lambda p: p.mkdir(), "not a firstepoch bundle"),
    (lambda p: p.write_text("<html>"), "not a firstepoch bundle"),
    (lambda p: (p.mkdir(), (p / CONFIG_FILE).write_text("{not json")), "not valid JSON"),
    (lambda p: (p.mkdir(), (p / CONFIG_FILE).write_text('{"format": "x"}')), "not a firstepoch bundle config"),
])
def test_what_is_not_a_bundle_is_named(tmp_path, make, message):
    path = tmp_path / "thing"
    make(path)
    with pytest.raises(FirstEpochError, match=message):
        firstepoch.load(path)


def test_weights_that_do_not_fit_the_config_are_refused(trained, tmp_path):
    _, path = trained
    config = json.loads((path / CONFIG_FILE).read_text())
    config["model"]["hidden"] = [7]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CONFIG_FILE).write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(FirstEpochError, match="cannot load the weights|do not match"):
        firstepoch.load(bad)


@pytest.mark.parametrize("flip", [True, False])
def test_test_time_augmentation_averages_the_views_the_model_was_trained_for(tmp_path, flip):
    import torch.nn.functional as F

    from firstepoch.data import samples

    folder = samples.digits(tmp_path / "digits") / "test"
    dls = DataLoaders.from_folder(folder, size=16, batch_size=32, flip=flip)
    learn = Learner(dls, "cnn", progress=False)
    learn.fit_one_cycle(2, 1e-2)  # enough to learn (an untrained one scores about 0.12 here)
    predictor = firstepoch.load(learn.export(tmp_path / "bundle"))
    assert predictor.preprocessor.flip is flip
    image = sorted(folder.rglob("*.png"))[0]
    x = predictor.preprocessor.encode(image).unsqueeze(0)
    zoom = F.interpolate(x[..., 1:15, 1:15], size=(16, 16), mode="bilinear", align_corners=False)
    views = [x, zoom] + ([x.flip(-1)] if flip else [])
    with torch.no_grad():
        expected = torch.stack([predictor.model(v).softmax(-1)[0] for v in views]).mean(0)
    averaged = predictor.predict(image, tta=True)
    assert averaged["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
    assert predictor.predict(image)["probability"] != averaged["probability"]  # off by default
    accuracy = predictor.evaluate(folder, tta=True)["accuracy"]
    assert accuracy > 0.5 and predictor.tta is False  # seen: 0.76 with the flip, 0.92 without
