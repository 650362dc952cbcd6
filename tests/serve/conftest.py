"""A real `firstepoch serve` process on a free loopback port, serving the bundled SmolLM2 and MiniLM, a digits
classifier, an iris bundle and a document index; the tests talk to it over HTTP like any client."""
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from firstepoch.data import samples

ROOT = Path(__file__).parents[2]
API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list, env: dict, api_key: str | None = API_KEY):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        key = ["--api-key", api_key] if api_key else []
        self.proc = subprocess.Popen([sys.executable, "-m", "firstepoch", "serve", *map(str, args), "--port",
                                      str(self.port), *key], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", headers=self.headers, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        output = self.stop()
        raise RuntimeError(f"the server did not answer /health in 120 s:\n{output[-3000:]}")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **kw)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read() if self.proc.stdout else ""


def server_env(tmp: Path, runs: Path | None = None) -> dict:
    (tmp / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "FIRSTEPOCH_HOME": str(tmp / "home"),
            "FIRSTEPOCH_RUNS": str(runs or tmp / "runs"), "TMPDIR": str(tmp / "tmp"), "FIRSTEPOCH_DEVICE": "cpu"}


def run_cli(env: dict, *args):
    result = subprocess.run([sys.executable, "-m", "firstepoch", *map(str, args)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def served_things(tmp_path_factory, docs_folder):
    """Bundles and an index made once with the real commands."""
    tmp = tmp_path_factory.mktemp("served")
    env = server_env(tmp)
    digits = samples.digits(tmp / "digits")
    run_cli(env, "train", "images", digits / "train", "--arch", "cnn", "--epochs", 3, "--size", 16, "--no-flip",
            "--name", "digits", "--out", tmp / "digits-model")
    from sklearn.datasets import load_iris

    iris = load_iris()
    with open(tmp / "iris.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*iris.feature_names, "species"])
        for x, y in zip(iris.data, iris.target):
            writer.writerow([*x, iris.target_names[y]])
    run_cli(env, "train", "tabular", tmp / "iris.csv", "--target", "species", "--epochs", 3, "--out", tmp / "iris")
    run_cli(env, "index", docs_folder, "--index", "docs")
    return tmp, env, digits


@pytest.fixture(scope="session")
def server(served_things):
    tmp, env, _ = served_things
    s = Server(["smollm2-135m-instruct", "all-minilm-l6-v2", f"digits={tmp / 'digits-model'}",
                f"iris={tmp / 'iris'}", "--index", "docs", "--queue", "1", "--context", "1024",
                "--parallel", "1"], env)  # one request at a time: the queue's guards (test_batching: four at once)
    yield s
    s.stop()
