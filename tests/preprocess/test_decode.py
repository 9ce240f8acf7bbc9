"""Image decoding: a corpus made here with Pillow (good, broken, odd modes, EXIF-rotated, oversized)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nenya.encoders.base import ImageTransform
from nenya.preprocess.cpu import SkipItem, check_transform, decode_image, read_bytes

H, W = 24, 40
SAME = ImageTransform(size=(H, W), resize=None, crop=True)  # no resize: pixels come through untouched


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def chw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def reason(data: bytes, **kw) -> str:
    with pytest.raises(SkipItem) as e:
        decode_image(data, transform=kw.pop("transform", SAME), **kw)
    return e.value.reason


def test_png_is_lossless(rgb):
    out = decode_image(encode(Image.fromarray(rgb), "PNG"), transform=SAME)
    assert out.dtype == np.uint8 and out.shape == (3, H, W)
    np.testing.assert_array_equal(out, chw(rgb))


def test_jpeg_decodes_as_pillow_does(rgb):
    data = encode(Image.fromarray(rgb), "JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data, transform=SAME), chw(expected))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda rgb: b"", "empty file"),
        (lambda rgb: np.random.default_rng(0).bytes(2000), "not an image"),
        (lambda rgb: b"just some notes, saved as .jpg by mistake\n", "not an image"),
        (lambda rgb: encode(Image.fromarray(rgb), "JPEG")[:300], "truncated"),
        (lambda rgb: encode(Image.fromarray(rgb), "PNG")[:400], "truncated"),
    ],
)
def test_bad_inputs_are_skipped_with_a_reason(rgb, make, expected):
    assert reason(make(rgb)) == expected


def test_pixel_limit_is_checked_from_the_header(rgb):
    data = encode(Image.fromarray(rgb), "PNG")
    assert reason(data, max_pixels=500) == f"pixel limit: {W}x{H} > 500"
    assert decode_image(data, transform=SAME, max_pixels=W * H).shape == (3, H, W)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and that holds no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pixel_limit_needs_no_decoding():
    """A header claiming a huge image is refused from the header alone (no pixels exist to decode)."""
    assert reason(png_header_only(9000, 8000), max_pixels=10**6) == "pixel limit: 9000x8000 > 1000000"
    # past twice Pillow's own limit, Pillow refuses at open; the reason keeps the same prefix
    assert reason(png_header_only(20000, 20000), max_pixels=10**6) == "pixel limit: 400000000 pixels > 1000000"


def test_cmyk_jpeg_converts_with_pillow(rgb):
    data = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    im = Image.open(io.BytesIO(data))
    assert im.mode == "CMYK"
    np.testing.assert_array_equal(decode_image(data, transform=SAME), chw(np.asarray(im.convert("RGB"))))


def test_16bit_png_is_shifted_to_8_bits():
    v = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 67 % 65536).astype(np.uint16)
    data = encode(Image.fromarray(v), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, transform=SAME)
    grey = (v >> 8).astype(np.uint8)
    np.testing.assert_array_equal(out, np.stack([grey] * 3))


def test_grey_and_float_modes():
    g = np.random.default_rng(2).integers(0, 256, (H, W), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(g), "PNG"), transform=SAME)
    np.testing.assert_array_equal(out, np.stack([g] * 3))
    f = np.linspace(-50, 300, H * W, dtype=np.float32).reshape(H, W)
    out = decode_image(encode(Image.fromarray(f, mode="F"), "TIFF"), transform=SAME)
    np.testing.assert_array_equal(out[0], np.rint(np.clip(f, 0, 255)).astype(np.uint8))


def test_rgba_is_composited_on_white(rgb):
    alpha = np.zeros((H, W), np.uint8)
    alpha[:, W // 2 :] = 255
    alpha[0, 0] = 128
    data = encode(Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), "PNG")
    out = decode_image(data, transform=SAME)
    np.testing.assert_array_equal(out[:, 1:, : W // 2], 255)  # transparent -> white, whatever the stored colour
    np.testing.assert_array_equal(out[:, :, W // 2 :], chw(rgb)[:, :, W // 2 :])  # opaque -> as stored
    half = rgb[0, 0].astype(float) * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(out[:, 0, 0].astype(float) - half).max() <= 1


def test_palette_png_with_and_without_transparency(rgb):
    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    data = encode(p, "PNG")
    np.testing.assert_array_equal(decode_image(data, transform=SAME), chw(np.asarray(p.convert("RGB"))))
    index = np.asarray(p)[0, 0]
    data = encode(p, "PNG", transparency=int(index))
    out = decode_image(data, transform=SAME)
    hit = np.asarray(p) == index
    assert (out[:, hit] == 255).all()
    np.testing.assert_array_equal(out[:, ~hit], chw(np.asarray(p.convert("RGB")))[:, ~hit])


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_equals_a_physically_rotated_copy(rgb, orientation, k):
    """Orientation 6 = rotate 90 degrees clockwise to display, 8 = counter-clockwise, 3 = 180."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # the pixels as stored, unrotated
    upright = np.ascontiguousarray(np.rot90(stored, k=k))
    lossless = encode(Image.fromarray(upright), "PNG")
    size = upright.shape[:2]
    t = ImageTransform(size=size, resize=None, crop=True)
    out = decode_image(data, transform=t)
    assert out.shape == (3, *size)
    np.testing.assert_array_equal(out, decode_image(lossless, transform=t))


def test_resize_and_crop_match_torchvision(rgb):
    from nenya.encoders.torchvision import import_torchvision

    tv = import_torchvision()
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    im = Image.fromarray(np.random.default_rng(3).integers(0, 256, (57, 83, 3), dtype=np.uint8))
    data = encode(im, "PNG")
    for t, ref in [
        (
            ImageTransform(size=(32, 32), resize=36, interpolation="bicubic"),
            Compose([Resize(36, InterpolationMode.BICUBIC), CenterCrop(32)]),
        ),
        (
            ImageTransform(size=(30, 50), resize=(40, 60), interpolation="bilinear"),
            Compose([Resize((40, 60), InterpolationMode.BILINEAR), CenterCrop((30, 50))]),
        ),
        (
            ImageTransform(size=(64, 96), resize=None),  # smaller than the crop: zero-padded, centred
            CenterCrop((64, 96)),
        ),
        (
            ImageTransform(size=(20, 20), resize=20, crop=False, interpolation="bilinear"),
            Resize((20, 20), InterpolationMode.BILINEAR),
        ),
    ]:
        expected = chw(np.asarray(ref(im)))
        np.testing.assert_array_equal(decode_image(data, transform=t), expected, err_msg=str(t))
    assert tv.__name__ == "torchvision"


def test_resize_keeps_the_aspect_ratio_like_torchvision():
    from nenya.preprocess.cpu import resized_shape

    t = ImageTransform(size=(10, 10), resize=100)
    assert resized_shape(300, 450, t) == (100, 150)
    assert resized_shape(451, 300, t) == (150, 100)  # int(100 * 451 / 300) = 150


def test_unknown_interpolation_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        check_transform(ImageTransform(interpolation="cubic-ish"))


def test_read_bytes(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"abc")
    assert read_bytes(tmp_path / "x.bin") == b"abc"
    with pytest.raises(SkipItem, match="missing file"):
        read_bytes(tmp_path / "nope.jpg")
    import fsspec

    fsspec.filesystem("memory").pipe("/decode-test/y.bin", b"xyz")
    assert read_bytes("memory://decode-test/y.bin") == b"xyz"
    with pytest.raises(SkipItem, match="missing file"):
        read_bytes("memory://decode-test/none.jpg")
