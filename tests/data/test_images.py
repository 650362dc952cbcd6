import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from firstepoch import FirstEpochError
from firstepoch.data import images
from firstepoch.data.images import ImagePreprocessor, open_image
from firstepoch.data.loaders import DataLoaders, preprocessor_from_config


def write(path, mode="RGB", size=(12, 10), color=None, fmt=None, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    channels = {"L": 1, "RGBA": 4, "CMYK": 4}.get(mode, 3)  # P is made from RGB
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        data = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
        img = Image.fromarray(data[..., 0] if channels == 1 else data, mode=None if channels != 4 else "RGBA")
        img = img.convert(mode)
    img.save(path, format=fmt, **save)
    return path


@pytest.fixture
def folder(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(10):
            write(tmp_path / "pets" / cls / f"{cls}_{i}.png")
    return tmp_path / "pets"


def test_from_folder_labels_and_a_seeded_split(folder):
    dls = DataLoaders.from_folder(folder, size=8, valid_pct=0.2, seed=1)
    again = DataLoaders.from_folder(folder, size=8, valid_pct=0.2, seed=1)
    assert dls.classes == ["cat", "dog"] and dls.n_out == 2 and dls.input_shape == [3, 8, 8]
    assert (dls.info["n_train"], dls.info["n_valid"]) == (16, 4)
    assert dls.valid.dataset.paths == again.valid.dataset.paths
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 3, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    x_all = torch.cat([x for x, _ in dls.valid])
    assert dls.preprocessor.mean != [0.0, 0.0, 0.0] and x_all.abs().max() < 10


def test_a_test_split_is_held_out_first_and_never_trained_on(folder):
    dls = DataLoaders.from_folder(folder, size=8, valid_pct=0.25, test_pct=0.2, seed=3)
    other = DataLoaders.from_folder(folder, size=8, valid_pct=0.5, test_pct=0.2, seed=3)
    test = set(dls.test.dataset.paths)
    assert len(test) == 4 and dls.info["n_test"] == 4 and (dls.info["n_train"], dls.info["n_valid"]) == (12, 4)
    assert not test & (set(dls.train.dataset.paths) | set(dls.valid.dataset.paths))
    assert set(other.test.dataset.paths) == test  # the same test set whatever the validation split


def test_train_valid_test_folders(tmp_path):
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        for cls in ("a", "b"):
            for i in range(n):
                write(tmp_path / split / cls / f"{i}.jpg", fmt="JPEG")
    dls = DataLoaders.from_folder(tmp_path, size=8)
    assert (dls.info["n_train"], dls.info["n_valid"], dls.info["n_test"]) == (12, 4, 6)
    assert len(dls.test.dataset) == 6


def test_labels_from_a_csv_and_from_file_names(folder, tmp_path):
    labels = tmp_path / "labels.csv"
    rows = [f"{p.relative_to(folder)},{'odd' if int(p.stem[-1]) % 2 else 'even'}"
            for p in sorted(folder.rglob("*.png"))]
    labels.write_text("file,label\n" + "\n".join(rows) + "\n")
    assert DataLoaders.from_folder(folder, labels=labels, size=8).classes == ["even", "odd"]
    by_regex = DataLoaders.from_name_func(folder, label_func=r"^([a-z]+)_\d+", size=8)
    by_func = DataLoaders.from_name_func(folder, label_func=lambda p: p.name.split("_")[0], size=8)
    assert by_regex.classes == by_func.classes == ["cat", "dog"]
    assert by_regex.train.dataset.labels == by_func.train.dataset.labels


def test_augmentation_is_a_function_of_seed_epoch_and_index(folder):
    ds = DataLoaders.from_folder(folder, size=8).train.dataset
    assert torch.equal(ds[(0, 3)][0], ds[(0, 3)][0])
    assert not torch.equal(ds[(0, 3)][0], ds[(1, 3)][0])


def test_a_saved_preprocessor_encodes_a_file_exactly_as_the_valid_loader(folder):
    dls = DataLoaders.from_folder(folder, size=8)
    ds = dls.valid.dataset
    reloaded = preprocessor_from_config(dls.preprocessor.to_config())
    for i in range(len(ds)):
        assert torch.equal(reloaded.encode(ds.paths[i]), ds[i][0])
    assert torch.equal(reloaded.encode(ds.paths[0].read_bytes()), ds[0][0])


def test_bad_files_are_skipped_with_one_warning_naming_them(folder):
    (folder / "cat" / "empty.png").write_bytes(b"")
    (folder / "cat" / "notes.png").write_text("not an image")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, format="JPEG")
    (folder / "dog" / "cut.jpg").write_bytes(good.getvalue()[:300])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dls = DataLoaders.from_folder(folder, size=8)
    [warning] = [str(w.message) for w in caught]
    assert "skipped 3 unreadable image(s) of 23" in warning and "empty.png: empty file" in warning
    assert dls.info["skipped"] == 3 and dls.info["n_train"] + dls.info["n_valid"] == 20


def test_odd_modes_are_converted(tmp_path):
    assert open_image(write(tmp_path / "cmyk.jpg", mode="CMYK", fmt="JPEG")).mode == "RGB"
    assert open_image(write(tmp_path / "deep.png", mode="I;16")).mode == "L"
    assert open_image(write(tmp_path / "alpha.png", mode="RGBA")).mode == "RGB"
    assert open_image(write(tmp_path / "palette.gif", mode="P")).mode == "RGB"
    misnamed = tmp_path / "really_a_png.jpg"
    misnamed.write_bytes(write(tmp_path / "x.png").read_bytes())
    assert open_image(misnamed).size == (12, 10)


def test_exif_rotated_photos_come_out_upright(tmp_path):
    img = Image.new("RGB", (20, 10), "white")
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (10, 20)


def test_grayscale_folders_give_one_channel_mixed_give_three(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            write(tmp_path / "g" / cls / f"{i}.png", mode="L")
    assert DataLoaders.from_folder(tmp_path / "g", size=8).input_shape == [1, 8, 8]
    write(tmp_path / "g" / "a" / "color.png", mode="RGB")
    dls = DataLoaders.from_folder(tmp_path / "g", size=8)
    assert dls.input_shape == [3, 8, 8] and dls.one_batch()[0].shape[1] == 3


@pytest.mark.parametrize("setup, call, message", [
    (lambda p: None, lambda p: DataLoaders.from_folder(p / "nope"), "nope: no such folder"),
    (lambda p: (p / "one" / "face").mkdir(parents=True) or write(p / "one" / "face" / "1.png"),
     lambda p: DataLoaders.from_folder(p / "one"), r"only 1 class found \('face'\)"),
    (lambda p: (write(p / "e" / "a" / "1.png"), (p / "e" / "b").mkdir()),
     lambda p: DataLoaders.from_folder(p / "e"), "b: class folder has no images"),
    (lambda p: write(p / "flat" / "1.png"), lambda p: DataLoaders.from_folder(p / "flat"),
     "no class sub-folders.*label-regex"),
    (lambda p: [write(p / "r" / f"x{i}.png") for i in range(4)],
     lambda p: DataLoaders.from_name_func(p / "r", label_func=r"^(cat|dog)_"), "does not match this file name"),
    (lambda p: [write(p / "s" / c / f"{i}.png") for c in "ab" for i in range(2)],
     lambda p: DataLoaders.from_folder(p / "s", valid_pct=0.1), "validation split is empty"),
    (lambda p: [write(p / "t" / c / f"{i}.png") for c in "ab" for i in range(5)],
     lambda p: DataLoaders.from_folder(p / "t", batch_size=64), "only 8 training items but batch size 64"),
])
def test_bad_input_is_one_clear_error(tmp_path, setup, call, message):
    setup(tmp_path)
    with pytest.raises(FirstEpochError, match=message):
        call(tmp_path)


def test_colour_images_get_colour_jitter_grey_ones_do_not():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    colour = torch.full((3, 16, 16), 120, dtype=torch.uint8)
    colour[0] = 200
    grey = torch.full((1, 16, 16), 120, dtype=torch.uint8)
    plain = images.augment(colour, g(), flip=False, rotate=0, jitter=0)
    jittered = images.augment(colour, g(), flip=False, rotate=0, jitter=0.2)
    assert not torch.equal(plain, jittered) and jittered.dtype == torch.uint8
    assert (jittered.float().mean() - plain.float().mean()).abs() < 0.25 * plain.float().mean()
    assert torch.equal(images.augment(grey, g(), False, 0, jitter=0), images.augment(grey, g(), False, 0, jitter=0.2))


def test_a_grey_model_takes_colour_photos_and_pdfs(tmp_path):
    """A model trained on grey images is given a colour photo or a rendered PDF page at predict time."""
    pre = ImagePreprocessor(16, 1, [0.5], [0.5])
    photo = Image.new("RGB", (40, 30), (200, 30, 30))
    photo.save(tmp_path / "photo.png")
    photo.save(tmp_path / "scan.pdf")
    for source in (tmp_path / "photo.png", tmp_path / "scan.pdf"):
        x = pre.encode(source)
        assert x.shape == (1, 16, 16)
    grey = round(0.299 * 200 + 0.587 * 30 + 0.114 * 30)  # Pillow's L conversion of the photo's colour
    assert abs(int(pre.pixels(tmp_path / "photo.png")[0, 8, 8]) - grey) <= 1
