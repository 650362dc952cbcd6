"""Your own GPT vs nanoGPT's CPU Shakespeare recipe, on the same text and split, in one run.

    python benchmarks/gpt_vs_nanogpt.py [CORPUS] [--nanogpt DIR] [--chars 1100000]

CORPUS defaults to the bundled Shakespeare (its first `--chars` characters, about the size of the usual
tiny-Shakespeare file). With `--nanogpt` pointing at a nanoGPT checkout, its train.py runs first with the
recipe from its README (4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 steps, no dropout, char
level, 90/10 split) on this text, and its wall clock is measured; firstepoch then trains with `--time` set
to that wall clock. Without `--nanogpt`, firstepoch gets `--seconds` (default 125, the anchor's figure on
this machine kind). Prints both valid losses. No nanoGPT code is copied here: its train.py runs as is.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPE = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
          "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
          "--lr_decay_iters=2000", "--dropout=0.0"]


def nanogpt_data(text: str, folder: Path) -> None:
    """nanoGPT's char-level data files: train.bin / val.bin (uint16) and meta.pkl, split 90/10 by position."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    folder.mkdir(parents=True)
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:  # the format its train.py reads (we write it, never read one)
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def run_nanogpt(checkout: Path, text: str, work: Path) -> tuple[float, float]:
    """(seconds, final val loss) of nanoGPT's recipe on `text`."""
    copy = work / "nanogpt"
    copy.mkdir()
    for name in ("train.py", "model.py", "configurator.py", "config"):
        src = checkout / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / name)
    nanogpt_data(text, copy / "data" / "bench")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", "--dataset=bench",
                           f"--out_dir={work / 'out'}", *RECIPE], cwd=copy, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{proc.stderr[-2000:]}")
    losses = re.findall(r"val loss ([0-9.]+)", proc.stdout)
    return seconds, float(losses[-1])


def run_firstepoch(corpus: Path, seconds: float, work: Path, options: list[str]) -> tuple[float, float]:
    env = {**os.environ, "FIRSTEPOCH_RUNS": str(work / "runs"), "FIRSTEPOCH_HOME": str(work / "home")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "firstepoch", "train", "text", str(corpus), "--time", f"{seconds}s",
                           "--preset", "tiny", "--context", "64", *options, "--name", "bench"],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"firstepoch failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (work / "runs" / "bench" / "metrics.jsonl").read_text().splitlines()]
    return wall, rows[-1]["valid_loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout to run side by side")
    parser.add_argument("--chars", type=int, default=1_100_000)
    parser.add_argument("--seconds", type=float, default=125.0)
    parser.add_argument("--batch-size", help="firstepoch's batch (default: train text's own, 24; nanoGPT's: 12)")
    parser.add_argument("--lr", help="firstepoch's peak learning rate (default: train text's own)")
    parser.add_argument("--opt", help="firstepoch's optimizer (default: train text's own, muon; or adamw)")
    parser.add_argument("--precision", help="firstepoch's precision (default fp32, as nanoGPT's CPU recipe)")
    parser.add_argument("--eval-every", help="firstepoch's steps between validation passes (default: its own)")
    args = parser.parse_args()
    from firstepoch.data import samples

    text = (args.corpus or samples.shakespeare()).read_text(encoding="utf-8")[:args.chars]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"
        corpus.write_text(text, encoding="utf-8")
        print(f"corpus: {len(text):,} characters, 90/10 split by position, char level")
        seconds = args.seconds
        if args.nanogpt:
            seconds, nano_loss = run_nanogpt(args.nanogpt, text, work)
            print(f"nanoGPT recipe (2000 steps):   valid loss {nano_loss:.4f} in {seconds:.0f} s")
        chosen = (("--batch-size", args.batch_size), ("--lr", args.lr), ("--opt", args.opt),
                  ("--precision", args.precision), ("--eval-every", args.eval_every))
        options = [item for flag, value in chosen if value for item in (flag, value)]
        wall, ours = run_firstepoch(corpus, seconds, work, options)
        print(f"firstepoch --time {seconds:.0f}s {' '.join(options) or '(its defaults)'}: valid loss {ours:.4f} "
              f"({wall:.0f} s with start-up)")
        if args.nanogpt:
            print(f"difference (firstepoch - nanoGPT): {ours - nano_loss:+.4f}   target: firstepoch <= 1.70")


if __name__ == "__main__":
    main()
