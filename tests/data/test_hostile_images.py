"""Files made to exhaust memory: PDF pages of absurd sizes, decompression bombs, thin strips. Each is a few KB
on disk; each must cost bounded memory, or be refused in one line before it is decoded."""
import struct
import warnings
import zlib

import pytest
import torch
from PIL import Image, ImageDraw

from firstepoch import FirstEpochError
from firstepoch.predictor import Predictor
from firstepoch.data import images
from firstepoch.data.images import ImagePreprocessor, open_image, render_pdf, scan_images

pytest.importorskip("pypdfium2")


def tiny_pdf(width: int, height: int) -> bytes:
    """A valid one-page PDF, blank, whose page is width x height points (its /MediaBox): about 330 bytes."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] >>" % (width, height)]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)  # where each object starts
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def big_png(path, width: int, height: int):
    """A black 1-bit PNG of width x height, written by hand row block by row block so that this test never holds
    the pixels: tens of KB on disk, width x height bytes once Pillow decodes it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter type 0, then the row's bits
    packer, block = zlib.compressobj(9), 1000
    data = b"".join(packer.compress(row * min(block, height - at)) for at in range(0, height, block)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit per pixel, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------ PDF pages
@pytest.mark.parametrize("width, height", [(100, 2000), (6, 14400), (14400, 6), (14400, 14400)])
def test_a_pdf_page_of_any_size_renders_in_bounded_pixels(width, height):
    data = tiny_pdf(width, height)
    assert len(data) < 400
    img = render_pdf(data)
    assert max(img.size) <= images.PDF_LONG_SIDE
    assert img.width * img.height <= images.PDF_SHORT_SIDE * images.PDF_LONG_SIDE
    assert (img.width < img.height) == (width < height) or width == height


def test_ordinary_pages_keep_their_short_side():
    assert render_pdf(tiny_pdf(595, 842)).size == (512, 725)  # A4
    assert render_pdf(tiny_pdf(300, 2400)).size == (512, 4096)  # a receipt 8 times as long as wide
    assert render_pdf(tiny_pdf(100, 2000)).size == (205, 4096)  # longer still: rendered smaller


def test_a_page_too_thin_to_be_a_model_input_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"PDF page 1, rendered, is 2 x 4,096 pixels, over 100 times as long"):
        open_image(tiny_pdf(6, 14400))
    strip = tmp_path / "strip.pdf"
    strip.write_bytes(tiny_pdf(6, 14400))
    ok = tmp_path / "ok.pdf"
    ok.write_bytes(tiny_pdf(595, 842))
    good, bad, _, _ = scan_images([strip, ok], size=16)
    assert good == [ok] and bad[0][0] == strip and "over 100 times as long" in bad[0][1]


# ------------------------------------------------------------------------------------------ decompression bombs
def test_a_huge_png_is_refused_from_its_header_before_decoding(tmp_path):
    bomb = big_png(tmp_path / "bomb.png", 13_000, 13_000)
    assert bomb.stat().st_size < 100_000  # 169 M pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"^image is 13,000 x 13,000 pixels \(169 MP\), over the 50 MP limit"):
            open_image(bomb)
        with pytest.raises(ValueError, match="over the 50 MP limit"):
            open_image(bomb.read_bytes())
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_an_image_past_pillows_own_limit_gets_the_same_one_line_error(tmp_path):
    bomb = big_png(tmp_path / "bigger.png", 20_000, 20_000)  # over twice Pillow's limit: Pillow raises itself
    with pytest.raises(ValueError, match=r"^image is 400 MP, over the 50 MP limit; downscale it first$"):
        open_image(bomb)


def test_a_thin_strip_is_refused_before_resizing_makes_it_huge(tmp_path):
    Image.new("L", (20_000, 1), 255).save(tmp_path / "strip.png")  # resized to 64 px high: 82 M pixels
    with pytest.raises(ValueError, match=r"20,000 x 1 pixels, over 100 times as long as it is wide"):
        open_image(tmp_path / "strip.png")
    Image.new("L", (1000, 10), 255).save(tmp_path / "long.png")  # 100 to 1 is still fine
    assert open_image(tmp_path / "long.png").size == (1000, 10)


def test_a_big_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    photo = Image.new("L", (9000, 6000), 40)  # 54 MP: over the limit at full size
    ImageDraw.Draw(photo).rectangle([0, 0, 4499, 2999], fill=220)  # the top-left quarter is light
    photo.save(tmp_path / "photo.jpg", quality=90)
    del photo
    img = open_image(tmp_path / "photo.jpg")
    assert img.size == (2250, 1500) and img.mode == "L"  # 1/4 scale: 6,000 // 1,024 = 5, so 4
    assert abs(img.getpixel((500, 500)) - 220) <= 3 and abs(img.getpixel((2000, 1200)) - 40) <= 3
    small = tmp_path / "small.jpg"
    Image.new("RGB", (3000, 2047), "white").save(small)  # short side under 2 x 1,024: decoded as it is
    assert open_image(small).size == (3000, 2047)


def test_every_caller_turns_a_bomb_into_one_line(tmp_path):
    from firstepoch.serve.endpoints import _predict_file
    from firstepoch.serve.errors import ApiError

    bomb = big_png(tmp_path / "bomb.png", 13_000, 13_000)
    fine = tmp_path / "fine.png"
    Image.new("RGB", (12, 10), "red").save(fine)
    good, bad, _, _ = scan_images([bomb, fine], size=8)  # a training folder: skipped with the reason
    assert good == [fine] and bad == [(bomb, "image is 13,000 x 13,000 pixels (169 MP), over the 50 MP limit; "
                                             "downscale it first")]
    pre = ImagePreprocessor(8, 3, [0.5] * 3, [0.25] * 3)
    predictor = Predictor(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)), pre,
                          "classification", ["a", "b"])
    assert predictor.predict(fine)["label"] in ("a", "b")
    with pytest.raises(FirstEpochError, match=r"bomb.png: cannot read it as an image \(image is 13,000 x 13,000"):
        predictor.predict(bomb)
    with pytest.raises(ApiError) as caught:  # the server's /v1/predict
        _predict_file(predictor, bomb)
    assert caught.value.status == 400 and "\n" not in caught.value.message
    assert caught.value.message.startswith("the upload: cannot read it as an image (image is 13,000 x 13,000 pixels")
