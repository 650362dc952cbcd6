import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from firstepoch import DataLoaders, FirstEpochError, Learner, TrainingInterrupted
from firstepoch.core.callbacks import Callback
from firstepoch.core.checkpoint import clean_state_dict, load_checkpoint
from firstepoch.core.io import atomic_open, save_torch
from firstepoch.core.runs import Run
from firstepoch.models import mlp


def digits_learner(digits, run=None, callbacks=(), opt="adamw"):
    x, y = digits
    dls = DataLoaders.from_tensors(x[:600], y[:600], batch_size=32)
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=[32], dropout=0.2)  # dropout: resume must restore the RNG too
    return Learner(dls, model, run=run, progress=False, callbacks=list(callbacks), opt=opt)


class InterruptAt(Callback):
    """Sends this process a real SIGINT at one training step, as Ctrl-C would."""

    def __init__(self, step):
        self.step = step

    def after_step(self):
        if self.learn.train_iter + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_resume_after_ctrl_c_is_bit_exact(tmp_path, digits, opt):
    reference = digits_learner(digits, opt=opt)
    reference.fit_one_cycle(3, 1e-2)

    learn = digits_learner(digits, run=Run.create(tmp_path / "runs", "r"), callbacks=[InterruptAt(20)], opt=opt)
    with pytest.raises(TrainingInterrupted, match="SIGINT at epoch 2, batch 5"):
        learn.fit_one_cycle(3, 1e-2)
    assert len(learn.recorder.losses) == 20
    assert Run(tmp_path / "runs" / "r").info()["status"] == "interrupted"

    resumed = digits_learner(digits, run=Run.create(tmp_path / "runs", "r"), opt=opt)
    resumed.fit_one_cycle(3, 1e-2, resume=True)
    assert resumed.recorder.losses == reference.recorder.losses
    assert [r["valid_loss"] for r in resumed.recorder.history] == [r["valid_loss"] for r in reference.recorder.history]
    for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(a, b)


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from sklearn.datasets import load_digits
    from firstepoch import DataLoaders, Learner, Run
    from firstepoch.core.callbacks import Callback
    from firstepoch.models import mlp

    class Slow(Callback):
        def after_batch(self):
            time.sleep(float(sys.argv[3]))

    torch.set_num_threads(1)
    d = load_digits()
    x, y = torch.tensor(d.data[:600] / 16.0, dtype=torch.float32), torch.tensor(d.target[:600])
    dls = DataLoaders.from_tensors(x, y, batch_size=32)
    run = Run.create(sys.argv[1], "r") if sys.argv[1] != "-" else None
    torch.manual_seed(0)
    learn = Learner(dls, mlp(64, 10, hidden=[32], dropout=0.2), run=run, progress=False, callbacks=[Slow()])
    learn.fit_one_cycle(4, 1e-2, resume=sys.argv[2] == "resume")
    print(repr(learn.recorder.losses))
""")


def _python(script: Path, *args):
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_resume_after_kill_9_is_bit_exact(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    checkpoint = tmp_path / "runs" / "r" / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs"), "fresh", "0.02"],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.15)  # somewhere inside the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists()
    assert load_checkpoint(checkpoint)["epoch"] >= 1
    resumed = _python(script, str(tmp_path / "runs"), "resume", "0")
    reference = _python(script, "-", "fresh", "0")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == reference.stdout.strip().splitlines()[-1]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_torch({"a": torch.ones(2)}, path)
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("killed mid-write")
    assert torch.equal(load_checkpoint(path)["model"]["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_names_the_path_and_keeps_the_old_checkpoint(tmp_path, monkeypatch, digits):
    learn = digits_learner(digits)
    path = tmp_path / "last.pt"
    learn.save(path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(FirstEpochError, match=f"{path}: disk full.*previous file is kept"):
        learn.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoints_from_compiled_and_ddp_models_load_into_a_plain_model(tmp_path, digits):
    learn = digits_learner(digits)
    state = learn.model.state_dict()
    wrapped = {f"module._orig_mod.{k}": v for k, v in state.items()}
    torch.save(wrapped, tmp_path / "ddp.pt")
    fresh = digits_learner(digits)
    fresh.model[1].weight.data.zero_()
    fresh.load(tmp_path / "ddp.pt")
    assert torch.equal(fresh.model[1].weight, learn.model[1].weight)
    assert set(clean_state_dict(wrapped)) == set(state)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FirstEpochError, match="evil.pt: not a readable firstepoch checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, digits):
    learn = digits_learner(digits, run=Run.create(tmp_path / "runs", "empty"))
    with pytest.raises(FirstEpochError, match="no checkpoint to resume from"):
        learn.fit(1, resume=True)


def test_sigterm_writes_a_last_checkpoint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs"), "fresh", "0.02"],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    metrics = tmp_path / "runs" / "r" / "run.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and "training" in metrics.read_text()):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "SIGTERM" in err
    state = load_checkpoint(tmp_path / "runs" / "r" / "checkpoints" / "last.pt")
    assert state["train_iter"] > 0
