"""PDF documents as images: the first page (or another) is rendered; broken PDFs are skipped and counted."""
import random

import pytest
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw

import firstepoch
from firstepoch import DataLoaders, Learner
from firstepoch.data.images import open_image

pytest.importorskip("pypdfium2")


def page(kind: str, seed: int) -> Image.Image:
    """An A4-shaped page: an Act has a full-width title band and one column; a Bill a boxed title, two columns."""
    rng = random.Random(seed)
    img = Image.new("RGB", (420, 595), "white")
    draw = ImageDraw.Draw(img)
    if kind == "act":
        draw.rectangle([0, 30, 420, 90], fill=(20, 20, 20))
        columns = [(40, 380)]
    else:
        draw.rectangle([120, 30, 300, 80], outline=(0, 0, 0), width=4)
        columns = [(30, 200), (220, 390)]
    for left, right in columns:
        for y in range(120, 560, 14):
            draw.line([left, y, left + rng.randint((right - left) // 2, right - left), y], fill=(60, 60, 60), width=3)
    return img


@pytest.fixture
def documents(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(16):
        for kind in ("act", "bill"):
            page(kind, i).save(folder / f"{kind}_{i:03d}.pdf")
    two = folder / "bill_twopages.pdf"
    page("act", 99).save(two, save_all=True, append_images=[page("bill", 98)])
    (folder / "act_broken.pdf").write_bytes((folder / "act_000.pdf").read_bytes()[:300])
    (folder / "bill_empty.pdf").write_bytes(b"")
    return folder


def test_a_folder_of_pdfs_labelled_by_file_name_trains_a_classifier(documents):
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 35"):
        dls = DataLoaders.from_name_func(documents, label_func=r"^(act|bill)_", size=48, valid_pct=0.25, seed=1,
                                         batch_size=8, flip=False)
    assert dls.classes == ["act", "bill"] and dls.info["skipped"] == 2
    learn = Learner(dls, "cnn", progress=False, seed=0)
    learn.fit_one_cycle(6, 3e-3)
    assert learn.evaluate()["accuracy"] >= 0.85
    bundle = firstepoch.load(learn.export(documents.parent / "bundle"))
    assert bundle.predict(documents / "act_005.pdf")["label"] == learn.predict(documents / "act_005.pdf")["label"]


def test_the_page_to_render_can_be_chosen(documents):
    first, second = open_image(documents / "bill_twopages.pdf"), open_image(documents / "bill_twopages.pdf", page=2)
    assert min(first.size) == 512 and first.mode == "RGB"
    def top(img):  # mean grey level of a strip across the title
        return TF.pil_to_tensor(img.convert("L").crop((0, 40, img.width, 60))).float().mean()

    assert top(first) < 100 < top(second)  # the Act's black title band is on page 1 only
    with pytest.raises(ValueError, match="no page 3"):
        open_image(documents / "bill_twopages.pdf", page=3)
