"""Learner overhead: the same CNN, data, batches and steps through firstepoch's Learner, a hand-written
PyTorch loop and PyTorch Lightning, in one run. Prints samples/s for each and the ratios.

    python benchmarks/learner_overhead.py [--epochs 3] [--repeats 9]

Data: scikit-learn's 1,797 real 8x8 digits upsampled to 16x16, 1,437 train / 360 valid, batch 64,
AdamW lr 3e-3, one validation pass per epoch everywhere. Lightning runs without its progress bar,
logger or checkpointing (its leanest set-up); the Learner runs with its defaults (recorder, NaN guard,
epoch table).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from firstepoch import DataLoaders, Learner
from firstepoch.models import cnn

BATCH, LR = 64, 3e-3


def data():
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    train, valid = order[:1437], order[1437:]
    return x[train], y[train], x[valid], y[valid]


def model():
    torch.manual_seed(0)
    return cnn(1, 10, widths=[32, 64])


def hand_written(xt, yt, xv, yv, epochs):
    net = model()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.01)
    train = DataLoader(TensorDataset(xt, yt), batch_size=BATCH, shuffle=True, drop_last=True)
    valid = DataLoader(TensorDataset(xv, yv), batch_size=BATCH)
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for xb, yb in train:
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        net.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in valid:
                correct += (net(xb).argmax(1) == yb).sum().item()
    return time.perf_counter() - start, correct / len(yv)


def firstepoch_learner(xt, yt, xv, yv, epochs):
    dls = DataLoaders.from_tensors(xt, yt, x_valid=xv, y_valid=yv, batch_size=BATCH)
    learn = Learner(dls, model(), lr=LR)
    start = time.perf_counter()
    history = learn.fit(epochs)
    return time.perf_counter() - start, history[-1]["accuracy"]


def lightning_trainer(xt, yt, xv, yv, epochs):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model()
            self.correct = 0

        def training_step(self, batch, _):
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def validation_step(self, batch, _):
            xb, yb = batch
            self.correct += (self.net(xb).argmax(1) == yb).sum().item()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.01)

    module = Module()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    train = DataLoader(TensorDataset(xt, yt), batch_size=BATCH, shuffle=True, drop_last=True)
    valid = DataLoader(TensorDataset(xv, yv), batch_size=BATCH)
    start = time.perf_counter()
    trainer.fit(module, train, valid)
    return time.perf_counter() - start, module.correct / len(yv) / epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    xt, yt, xv, yv = data()
    contenders = {"hand-written loop": hand_written, "firstepoch Learner": firstepoch_learner}
    try:
        import lightning  # noqa: F401

        contenders["PyTorch Lightning"] = lightning_trainer
    except ImportError:
        print("lightning is not installed (pip install lightning): comparing with the hand-written loop only")
    for run in contenders.values():  # warm-up: allocator, thread pools, first-call costs
        run(xt, yt, xv, yv, 1)
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits everyone alike
        for name, run in contenders.items():
            seconds, acc = run(xt, yt, xv, yv, args.epochs)
            times[name].append(seconds)
    samples = len(xt) // BATCH * BATCH * args.epochs
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}, {args.epochs} epochs x "
          f"{len(xt) // BATCH} steps of {BATCH}, {args.repeats} interleaved repeats")
    # Noise on a shared machine only ever adds time, so the best run is the cleanest estimate; the median
    # is printed beside it.
    for label, pick in (("best", min), ("median", statistics.median)):
        rate = {name: samples / pick(t) for name, t in times.items()}
        base = rate["hand-written loop"]
        print(f"\n{label} run        samples/s   vs hand loop")
        for name, r in rate.items():
            print(f"{name:22}{r:8.0f}   {r / base:.3f}x")
        if "PyTorch Lightning" in rate:
            print(f"Learner / Lightning: {rate['firstepoch Learner'] / rate['PyTorch Lightning']:.3f}x")


if __name__ == "__main__":
    main()
