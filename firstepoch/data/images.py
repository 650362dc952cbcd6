"""Image folders: labels from sub-folders, file names or a CSV; every file scanned before training.

Decoded images are converted once (EXIF rotation, CMYK, 16-bit, palette and alpha handled) and resized so
the shorter side is `size`, then centre-cropped; small datasets keep that result in memory. Training
augmentation (random crop, flip, small rotation) draws from a generator seeded by (seed, epoch, index):
a pure function of the item, so a resumed or distributed run sees exactly the same pixels.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from firstepoch.data.core import check_batch_size, make_loader, split_indices
from firstepoch.errors import FirstEpochError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".pdf"}
PDF_SHORT_SIDE = 512  # pixels on the shorter side of a rendered PDF page: ample for inputs up to 256x256
# pixels on the longer side at most: a page up to 8 times as long as wide keeps its 512 px short side, a longer
# one is rendered smaller, so no page costs more than 512 x 4096 pixels (8 MB) however odd its /MediaBox
PDF_LONG_SIDE = 4096
# the most pixels decoded from one file: a 48 MP phone photo fits (and is decoded smaller, see below); a bigger
# image (a 13,000 x 13,000 PNG is 169 MP: half a gigabyte as RGB, more while converted) is refused from its
# header, before decoding
MAX_IMAGE_PIXELS = 50_000_000
# the longest side at most this many times the shortest: every use resizes the short side to the model's input
# size, so a 1 x 50,000 strip (a few bytes as a PNG) would become 256 x 12,800,000 pixels (10 GB)
MAX_ASPECT_RATIO = 100
# a JPEG twice this size or more is decoded at 1/2, 1/4 or 1/8 scale by the decoder itself (Pillow's `draft`)
# keeping at least this many pixels on its short side: twice what a PDF page is rendered at, ample for any input
JPEG_DRAFT_SHORT_SIDE = 1024
CACHE_LIMIT_BYTES = 1 << 30


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


# ------------------------------------------------------------------------------------------ decoding
def render_pdf(source, page: int = 1) -> Image.Image:
    """Page `page` (1-based) of a PDF (path or bytes) as an RGB image, its shorter side `PDF_SHORT_SIDE` pixels
    (fewer for a page over 8 times as long as wide: its longer side is at most `PDF_LONG_SIDE`).

    Raises ValueError, with the reason, for an encrypted, empty or broken PDF or a page it does not have."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(source)
    except pdfium.PdfiumError as exc:
        why = "encrypted (password-protected)" if "password" in str(exc).lower() else f"broken ({exc})"
        raise ValueError(f"PDF {why}") from exc
    try:
        if len(pdf) == 0:
            raise ValueError("PDF with no pages")
        if page > len(pdf):
            raise ValueError(f"PDF with {len(pdf)} page(s), no page {page}")
        sheet = pdf[page - 1]
        short, long = sorted(max(1.0, side) for side in sheet.get_size())
        scale = min(PDF_SHORT_SIDE / short, PDF_LONG_SIDE / long)  # the page's size in points is the PDF's to say
        return sheet.render(scale=scale).to_pil().convert("RGB")
    except pdfium.PdfiumError as exc:
        raise ValueError(f"PDF page {page} cannot be rendered ({exc})") from exc
    finally:
        pdf.close()


def _is_pdf(source) -> bool:
    if isinstance(source, bytes):
        return source[:5] == b"%PDF-"
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".pdf"


def _check_size(width: int, height: int, what: str = "image") -> None:
    """Refuse an image too big to decode safely (`MAX_IMAGE_PIXELS`) or too thin to resize (`MAX_ASPECT_RATIO`)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {width:,} x {height:,} pixels ({width * height / 1e6:.0f} MP), over the "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit; downscale it first")
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ValueError(f"{what} is {width:,} x {height:,} pixels, over {MAX_ASPECT_RATIO} times as long as it is "
                         f"wide; a model would see only its middle: crop it into pieces closer to square")


def _decode(source) -> Image.Image:
    """Open a path or bytes, check the size its header gives (Image.open reads only the header), then decode."""
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 MP on; our own, lower limit is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused before we see the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" {int(found.group(1)) / 1e6:.0f} MP," if found else ""
        raise ValueError(f"image is{size} over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit; downscale it first") from None
    try:
        if min(img.size) >= 2 * JPEG_DRAFT_SHORT_SIDE:  # only JPEG decoders scale as they decode; others ignore it
            img.draft(None, (JPEG_DRAFT_SHORT_SIDE, JPEG_DRAFT_SHORT_SIDE))
        _check_size(*img.size)
        img.load()  # decode now: a truncated file fails here, not mid-epoch
    except BaseException:
        img.close()  # a refused image's file is not left open
        raise
    return img


def open_image(source, page: int = 1) -> Image.Image:
    """Decode a path, bytes or PIL image to an 8-bit 'L' or 'RGB' image, upright per its EXIF tag.
    A PDF gives its page `page`, rendered. A large JPEG is decoded at a reduced scale (its short side at least
    `JPEG_DRAFT_SHORT_SIDE`). Raises ValueError for an image over `MAX_IMAGE_PIXELS` (checked before decoding)
    or one side over `MAX_ASPECT_RATIO` times the other."""
    if isinstance(source, Image.Image):
        img = source
        _check_size(*img.size)
    elif _is_pdf(source):
        img = render_pdf(str(source) if isinstance(source, Path) else source, page)
        _check_size(*img.size, what=f"PDF page {page}, rendered,")
    else:
        img = _decode(source)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / 32-bit: scale the real range to 0..255
        t = torch.from_numpy(np.asarray(img, dtype=np.float32))
        lo, hi = float(t.min()), float(t.max())
        t = (t - lo) / (hi - lo) * 255 if hi > lo else torch.zeros_like(t)
        return Image.fromarray(t.round().to(torch.uint8).numpy(), mode="L")
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("L" if img.mode == "1" else "RGB")  # CMYK, YCbCr, LAB, HSV, 1


def _to_tensor(img: Image.Image, channels: int | None, size: int) -> torch.Tensor:
    """uint8 (C, size, size): shorter side resized to `size`, centre crop. `channels=None` keeps the mode's."""
    if channels == 3 and img.mode != "RGB":
        img = img.convert("RGB")  # for 'L' this repeats the channel, as `_as_channels` does after resizing
    elif channels == 1 and img.mode != "L":
        img = img.convert("L")  # a colour photo or a rendered PDF given to a model trained on grey images
    t = TF.pil_to_tensor(img)
    t = TF.resize(t, size, antialias=True)
    return TF.center_crop(t, [size, size])


def _as_channels(t: torch.Tensor, channels: int) -> torch.Tensor:
    return t.expand(3, -1, -1).clone() if channels == 3 and t.shape[0] == 1 else t


def scan_images(paths: Sequence[Path], size: int | None = None, page: int = 1):
    """Decode every file once. Returns (good paths, [(bad path, reason)], grayscale flags, pixels).

    With `size`, pixels holds each good image resized and cropped (uint8, its own channel count) while
    they fit in `CACHE_LIMIT_BYTES`; otherwise pixels is None and images are decoded again when used.
    """
    good, bad, gray, pixels, nbytes = [], [], [], [] if size else None, 0
    for path in paths:
        try:
            if path.stat().st_size == 0:
                raise ValueError("empty file")
            img = open_image(path, page)
        except (UnidentifiedImageError, ValueError) as exc:
            bad.append((path, str(exc) if isinstance(exc, ValueError) else "not an image"))
            continue
        except (OSError, SyntaxError) as exc:  # PIL raises these for truncated or corrupt data
            bad.append((path, f"unreadable ({str(exc)[:60]})"))
            continue
        good.append(path)
        gray.append(img.mode == "L")
        if pixels is not None:
            pixels.append(_to_tensor(img, None, size))
            nbytes += pixels[-1].numel()
            if nbytes > CACHE_LIMIT_BYTES:
                pixels = None
    return good, bad, gray, pixels


def _warn_skipped(bad: list[tuple[Path, str]], total: int) -> None:
    if bad:
        shown = "; ".join(f"{p}: {why}" for p, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"skipped {len(bad)} unreadable image(s) of {total} ({shown}{more})", stacklevel=3)


# ------------------------------------------------------------------------------------------ preprocessing
class ImagePreprocessor:
    """File -> normalised float tensor (C, size, size), exactly as the validation set sees it."""

    kind, takes_files = "image", True

    def __init__(self, size: int, channels: int, mean: Sequence[float], std: Sequence[float], page: int = 1,
                 flip: bool = False):
        self.size, self.channels, self.mean, self.std, self.page = size, channels, list(mean), list(std), page
        self.flip = flip  # trained with mirror images: test-time augmentation may use them too
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def pixels(self, source) -> torch.Tensor:
        """uint8 (C, size, size) before augmentation and normalisation."""
        try:
            return _to_tensor(open_image(source, self.page), self.channels, self.size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise FirstEpochError(f"{source if isinstance(source, (str, Path)) else 'image'}: cannot read "
                                  f"it as an image ({exc})") from exc

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise with these per-channel stats instead (a pretrained model's own; 3 values are averaged for
        grey images)."""
        if self.channels == 1 and len(mean) == 3:
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        self.mean, self.std = list(mean), list(std)
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() / 255 - self._mean) / self._std

    def encode(self, item) -> torch.Tensor:
        return self.normalize(self.pixels(item))

    def to_config(self) -> dict:
        return {"kind": "image", "size": self.size, "channels": self.channels, "mean": self.mean, "std": self.std,
                "page": self.page, "flip": self.flip}

    @classmethod
    def from_config(cls, config: dict) -> "ImagePreprocessor":
        return cls(config["size"], config["channels"], config["mean"], config["std"], config.get("page", 1),
                   config.get("flip", False))

    def read_items(self, path: Path) -> Iterator[tuple[Path, Path]]:
        return image_items(path)

    def read_labelled(self, path: Path, classes: list[str] | None, task: str) -> tuple[list[Path], torch.Tensor]:
        return labelled_images(path, classes or [])


def image_items(path: Path) -> Iterator[tuple[Path, Path]]:
    """An image or PDF file is one item, named by its path."""
    yield path, path


def labelled_images(folder: Path, classes: list[str]) -> tuple[list[Path], torch.Tensor]:
    """(readable images, their class indices) of a folder with one sub-folder per class of the model."""
    paths, labels = _labelled_by_folder(_check_folder(folder))
    if unknown := sorted(set(labels) - set(classes)):
        raise FirstEpochError(f"{folder}: class folder(s) {unknown} are not classes of this model "
                              f"({', '.join(classes)})")
    good, bad, _, _ = scan_images(paths)
    _warn_skipped(bad, len(paths))
    keep = set(good)
    index = {c: i for i, c in enumerate(classes)}
    return good, torch.tensor([index[lab] for p, lab in zip(paths, labels) if p in keep])


def augment(pixels: torch.Tensor, g: torch.Generator, flip: bool, rotate: float, jitter: float = 0.2) -> torch.Tensor:
    """Random crop of 80-100% of the area (resized back), optional flip, rotation in [-rotate, rotate], and for
    colour images brightness, contrast and saturation each scaled by a factor in [1 - jitter, 1 + jitter]."""
    size = pixels.shape[-1]
    scale = 0.8 + 0.2 * torch.rand((), generator=g).item()
    crop = max(1, round(size * scale ** 0.5))
    top, left = (torch.randint(0, size - crop + 1, (2,), generator=g)).tolist()
    out = TF.resized_crop(pixels, top, left, crop, crop, [size, size], antialias=True)
    if flip and torch.rand((), generator=g).item() < 0.5:
        out = TF.horizontal_flip(out)
    if rotate:
        angle = (torch.rand((), generator=g).item() * 2 - 1) * rotate
        out = TF.rotate(out, angle)
    if jitter and out.shape[0] == 3:
        brightness, contrast, saturation = (1 + (torch.rand(3, generator=g) * 2 - 1) * jitter).tolist()
        out = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(out, brightness), contrast), saturation)
    return out


class ImageDataset(Dataset):
    """Items are paths; keys are indices (valid) or (epoch, index) pairs (augmented training)."""

    def __init__(self, paths: list[Path], labels: list[int], pre: ImagePreprocessor, cache: list | None,
                 train: bool = False, seed: int = 0, flip: bool = True, rotate: float = 10.0):
        self.paths, self.labels, self.pre, self.cache = paths, labels, pre, cache
        self.train, self.seed, self.flip, self.rotate = train, seed, flip, rotate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        pixels = self.cache[i] if self.cache is not None else self.pre.pixels(self.paths[i])
        if self.train:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
            pixels = augment(pixels, g, self.flip, self.rotate)
        return self.pre.normalize(pixels), self.labels[i]


# ------------------------------------------------------------------------------------------ building
def _stats(cache: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to 2,000 of) the training images, in [0, 1] units."""
    step = max(1, len(cache) // 2000)
    x = torch.stack(cache[::step]).float() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return mean.tolist(), std.tolist()


def _fingerprint(root: Path, paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{p.relative_to(root) if p.is_relative_to(root) else p}:{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def build(root: Path, splits: dict[str, tuple[list[Path], list[str]]], size: int = 64, seed: int = 42,
          batch_size: int | None = None, flip: bool = True, rotate: float = 10.0, num_workers: int = 0,
          page: int = 1) -> dict:
    """The fields of a `DataLoaders` from {"train": (paths, labels), "valid": (...), optional "test": (...)} (the
    one builder)."""
    scanned, total, all_bad = {}, 0, []
    for name, (paths, labels) in splits.items():
        good, bad, gray, pixels = scan_images(paths, size, page)
        keep = set(good)
        scanned[name] = (good, [lab for p, lab in zip(paths, labels) if p in keep], gray, pixels)
        total += len(paths)
        all_bad += bad
    _warn_skipped(all_bad, total)
    classes = sorted(set(scanned["train"][1]))
    if len(classes) < 2:
        found = f" ({classes[0]!r})" if classes else ""
        raise FirstEpochError(f"{root}: only {len(classes)} class found{found}; a classifier needs at least two "
                              f"classes (sub-folders or labels)")
    index = {c: i for i, c in enumerate(classes)}
    for name, (_, labels, _, _) in scanned.items():
        if unknown := sorted(set(labels) - set(index)):
            raise FirstEpochError(f"{root}: the {name} split has class(es) {unknown} that training does not; "
                                  f"every class needs training images")
    train_paths = scanned["train"][0]
    n_train, n_valid = len(train_paths), len(scanned["valid"][0])
    bs = check_batch_size(batch_size, n_train, n_valid, str(root))
    channels = 1 if all(all(gray) for _, _, gray, _ in scanned.values()) else 3
    caches = {name: None if pixels is None else [_as_channels(t, channels) for t in pixels]
              for name, (_, _, _, pixels) in scanned.items()}
    sample = caches["train"] or [_to_tensor(open_image(p, page), channels, size) for p in train_paths[:2000]]
    pre = ImagePreprocessor(size, channels, *_stats(sample), page=page, flip=flip)
    loaders = {}
    for name, (paths, labels, _, _) in scanned.items():
        train = name == "train"
        ds = ImageDataset(paths, [index[lab] for lab in labels], pre, caches[name], train=train, seed=seed,
                          flip=flip, rotate=rotate)
        loaders[name] = make_loader(ds, bs, train=train, seed=seed, num_workers=num_workers, with_epoch=train)
    all_paths = [p for paths, _, _, _ in scanned.values() for p in paths]
    return dict(train=loaders["train"], valid=loaders["valid"], test=loaders.get("test"),
                task="classification", preprocessor=pre, input_shape=[channels, size, size],
                n_out=len(classes), classes=classes, fingerprint=_fingerprint(root, all_paths),
                info={"n_train": n_train, "n_valid": n_valid,
                      "n_test": len(scanned["test"][0]) if "test" in scanned else 0,
                      "skipped": len(all_bad), "source": str(root)})


def _split(root, paths, labels, valid_pct, seed, test_pct: float = 0.0, **kwargs) -> dict:
    """Seeded splits: first `test_pct` held out as a test set that training never sees (the same whatever
    `valid_pct` is), then `valid_pct` of the rest for validation."""
    test = None
    if test_pct:
        rest, test_idx = split_indices(len(paths), test_pct, seed + 1)
        if not test_idx:
            raise FirstEpochError(f"{root}: test_pct {test_pct} of {len(paths)} images is no image at all; "
                                  f"raise it or leave it out")
        test = ([paths[i] for i in test_idx], [labels[i] for i in test_idx])
        paths, labels = [paths[i] for i in rest], [labels[i] for i in rest]
    train_idx, valid_idx = split_indices(len(paths), valid_pct, seed)
    pick = lambda idx: ([paths[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    splits = {"train": pick(train_idx), "valid": pick(valid_idx), **({"test": test} if test else {})}
    return build(root, splits, seed=seed, **kwargs)


def _check_folder(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FirstEpochError(f"{path}: no such folder")
    if not path.is_dir():
        raise FirstEpochError(f"{path}: not a folder; give a folder of images with one sub-folder per class")
    return path


def _labelled_by_folder(folder: Path) -> tuple[list[Path], list[str]]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for d in classes:
        files = image_files(d)
        if not files:
            raise FirstEpochError(f"{d}: class folder has no images ({', '.join(sorted(EXTENSIONS))}); "
                                  f"add some or remove the folder")
        paths += files
        labels += [d.name] * len(files)
    return paths, labels


def folder_parts(path, valid_pct: float = 0.2, seed: int = 42, size: int = 64, batch_size: int | None = None,
                labels: str | Path | None = None, flip: bool = True, rotate: float = 10.0,
                num_workers: int = 0, page: int = 1, test_pct: float = 0.0) -> dict:
    """The fields of `DataLoaders.from_folder`: images labelled by sub-folder names (`path/<class>/*.png`).

    If `path/train/` and `path/valid/` exist (and optionally `path/test/`), they are the splits; otherwise
    `valid_pct` of the images, chosen with `seed`, are held out for validation, after `test_pct` of them
    for a test set that training never sees. `labels` names a CSV of `file,label`
    rows (paths relative to `path`) to use instead of folder names. PDFs count as images: their page
    `page` (default the first) is rendered; encrypted, empty or broken ones are skipped with a count.
    """
    root = _check_folder(path)
    common = dict(size=size, batch_size=batch_size, flip=flip, rotate=rotate, num_workers=num_workers, page=page)
    if labels is not None:
        paths, names = read_label_csv(root, Path(labels))
        return _split(root, paths, names, valid_pct, seed, test_pct, **common)
    if (root / "train").is_dir() and (root / "valid").is_dir():
        if test_pct:
            raise FirstEpochError(f"{root}: has train/ and valid/ folders, so --test-pct does not apply; put the "
                                  f"test images in {root / 'test'}/ instead")
        splits = {s: _labelled_by_folder(root / s) for s in ("train", "valid", "test") if (root / s).is_dir()}
        return build(root, splits, seed=seed, **common)
    paths, names = _labelled_by_folder(root)
    if not paths:
        loose = image_files(root)
        hint = ("; they sit directly in the folder: put each class in its own sub-folder, or use --label-regex"
                if loose else "")
        raise FirstEpochError(f"{root}: no class sub-folders with images found{hint}")
    return _split(root, paths, names, valid_pct, seed, test_pct, **common)


def name_func_parts(path, files: Sequence[Path] | None = None, label_func: Callable[[Path], str] | str | None = None,
                   valid_pct: float = 0.2, seed: int = 42, size: int = 64, batch_size: int | None = None,
                   flip: bool = True, rotate: float = 10.0, num_workers: int = 0, page: int = 1,
                   test_pct: float = 0.0) -> dict:
    """The fields of `DataLoaders.from_name_func`: images labelled from their file names by `label_func(path) ->
    label`, or by a regex whose first group is the label (e.g. r"^([a-z_]+)_\\d+" for "great_pyrenees_12.jpg")."""
    root = _check_folder(path)
    files = [Path(f) for f in files] if files is not None else image_files(root)
    if not files:
        raise FirstEpochError(f"{root}: no images found ({', '.join(sorted(EXTENSIONS))})")
    if label_func is None:
        raise FirstEpochError("from_name_func needs label_func: a function of the path or a regex string")
    if isinstance(label_func, str):
        pattern = re.compile(label_func)

        def label_func(p: Path, pattern=pattern) -> str:
            match = pattern.search(p.name)
            if not match:
                raise FirstEpochError(f"{p}: the label regex {pattern.pattern!r} does not match this file name")
            return match.group(1) if match.groups() else match.group(0)

    labels = [str(label_func(f)) for f in files]
    return _split(root, files, labels, valid_pct, seed, test_pct, size=size, batch_size=batch_size, flip=flip,
                  rotate=rotate, num_workers=num_workers, page=page)


def read_label_csv(root: Path, csv_path: Path) -> tuple[list[Path], list[str]]:
    """(paths, labels) from a CSV of `file,label` rows, paths relative to `root`."""
    if not csv_path.is_file():
        raise FirstEpochError(f"{csv_path}: no such labels file")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
            raise FirstEpochError(f"{csv_path}: needs a header row with the columns 'file' and 'label' "
                                  f"(found {reader.fieldnames})")
        rows = list(reader)
    paths, labels = [], []
    for line, row in enumerate(rows, start=2):
        p = root / row["file"]
        if not p.is_file():
            raise FirstEpochError(f"{csv_path}, line {line}: {row['file']!r} is not a file under {root}")
        paths.append(p)
        labels.append(row["label"])
    return paths, labels
