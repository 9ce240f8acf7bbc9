"""``--decode gpu``: JPEG bytes shipped by the readers, decoded (nvjpeg), oriented, resized and cropped
on the encoder's device, with CPU fallbacks.

nvjpeg itself needs a CUDA GPU (``test_nvjpeg_on_cuda_matches_the_cpu_path`` runs where one is).
Everywhere else the device half runs with a reference decoder in nvjpeg's place: torchvision's
CPU ``decode_jpeg`` where its image operators load, else Pillow's decoder. Everything around the
decoder (which files are shipped, EXIF orientation, tensor resize/crop, per-item fallbacks, skip
reasons, fingerprints, the CLI's fallback) is the real code.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from nenya import cli
from nenya.encoders.base import ImageTransform
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection
from nenya.preprocess import device as dd
from nenya.preprocess.cpu import decode_image
from nenya.preprocess.cpu import resize_crop as pil_resize_crop
from nenya.sources.images import ImageFolderSource
from photokit import picture, save, small_encoder

OPTS = RunOptions(batch_size=4, shard_size=8, num_workers=0, device="cpu", progress=False)


def jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def with_orientation(im: Image.Image, orientation: int, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(im, exif=exif.tobytes(), **kw)


def noisy(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.asarray(picture(seed, size=shape), dtype=np.int16)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def reference_decoder():
    """A stand-in for nvjpeg with its signature: torchvision's CPU decode_jpeg if it loads, else Pillow."""
    try:
        from nenya.encoders.torchvision import import_torchvision

        import_torchvision()
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.io.image import _assert_has_image_ops

        _assert_has_image_ops()
        return lambda datas, device: [t.to(device) for t in decode_jpeg(datas, mode=ImageReadMode.RGB)]
    except Exception:

        def pillow(datas, device):
            out = []
            for d in datas:
                im = Image.open(io.BytesIO(bytes(d.numpy())))
                im.load()  # raises on a file the decoder cannot read, as nvjpeg does
                out.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).to(device))
            return out

        return pillow


# -- the pieces ----------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_equals_pillows_exif_transpose(orientation):
    arr = noisy((13, 21), seed=orientation)
    im = Image.open(io.BytesIO(with_orientation(Image.fromarray(arr), orientation)))
    stored = np.array(im.convert("RGB"))  # the pixels as stored
    expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = dd.orient(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(57, 83), (300, 400), (20, 30)])
@pytest.mark.parametrize(
    "t",
    [
        ImageTransform(size=(32, 32), resize=36, interpolation="bicubic"),
        ImageTransform(size=(224, 224), resize=256, interpolation="bilinear"),
        ImageTransform(size=(224, 224), resize=256, interpolation="bicubic"),
        ImageTransform(size=(30, 50), resize=(40, 60), interpolation="bilinear"),
        ImageTransform(size=(20, 20), resize=(20, 20), crop=False, interpolation="bilinear"),
    ],
    ids=["bicubic-36-32", "bilinear-256-224", "bicubic-256-224", "bilinear-exact", "no-crop"],
)
def test_tensor_resize_crop_is_within_two_grey_levels_of_pillow(shape, t):
    arr = noisy(shape)
    expected = np.asarray(pil_resize_crop(Image.fromarray(arr), t)).transpose(2, 0, 1).astype(int)
    got = dd.resize_crop(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), t).numpy().astype(int)
    assert got.shape == expected.shape == (3, *t.size)
    diff = np.abs(got - expected)
    assert diff.max() <= 2 and diff.mean() < 0.35, (diff.max(), diff.mean())


def test_crop_and_pad_without_resizing_are_exact():
    arr = noisy((57, 83))
    for t in (ImageTransform(size=(64, 96), resize=None), ImageTransform(size=(40, 40), resize=None)):
        expected = np.asarray(pil_resize_crop(Image.fromarray(arr), t)).transpose(2, 0, 1)
        np.testing.assert_array_equal(dd.resize_crop(torch.from_numpy(arr).permute(2, 0, 1), t).numpy(), expected)


def test_resize_without_a_tensor_filter_is_refused():
    with pytest.raises(ValueError, match="lanczos"):
        dd.resize_crop(torch.zeros(3, 8, 8, dtype=torch.uint8), ImageTransform(size=(4, 4), interpolation="lanczos"))


def test_only_clean_grey_and_rgb_jpegs_are_left_for_the_device():
    im = picture(1, size=(40, 60))
    good = jpeg(im)
    assert dd.device_candidate(good, max_pixels=10**6) == 1
    assert dd.device_candidate(with_orientation(im, 6), max_pixels=10**6) == 6
    assert dd.device_candidate(jpeg(im.convert("L")), max_pixels=10**6) == 1
    assert dd.device_candidate(jpeg(im, progressive=True), max_pixels=10**6) == 1
    assert dd.device_candidate(good + b"\x00\x00\n", max_pixels=10**6) == 1  # padding after the end marker
    buf = io.BytesIO()
    im.save(buf, "PNG")
    for data, why in [
        (jpeg(im.convert("CMYK")), "CMYK: Pillow converts it"),
        (buf.getvalue(), "PNG"),
        (good[: len(good) // 2], "truncated: the CPU path names it"),
        (good, "over the pixel limit"),
        (b"", "empty"),
        (b"\xff\xd8\xff" + bytes(100), "a JPEG signature and nothing else"),
    ]:
        limit = 100 if why == "over the pixel limit" else 10**6
        assert dd.device_candidate(data, max_pixels=limit) is None, why


def test_unavailable_says_why():
    t = ImageTransform()
    assert "CUDA" in dd.unavailable(torch.device("cpu"), t)
    assert "lanczos" in dd.unavailable(torch.device("cuda"), ImageTransform(interpolation="lanczos"))
    assert "arrays" in dd.unavailable(torch.device("cuda"), None)


# -- the whole path --------------------------------------------------------------------------------
@pytest.fixture
def jpegs(tmp_path):
    """A folder of JPEGs (RGB, grey, progressive, EXIF-rotated, CMYK), a PNG and two bad files."""
    root = tmp_path / "photos"
    save(picture(0, size=(48, 64)), root / "a_rgb.jpg", "JPEG", quality=95)
    save(picture(1, size=(64, 40)).convert("L"), root / "b_grey.jpg", "JPEG", quality=95)
    save(picture(2, size=(50, 50)), root / "c_progressive.jpg", "JPEG", quality=90, progressive=True)
    (root / "d_exif6.jpg").write_bytes(with_orientation(picture(3, size=(40, 70)), 6))
    (root / "e_exif3.jpg").write_bytes(with_orientation(picture(4, size=(45, 33)), 3))
    save(picture(5).convert("CMYK"), root / "f_cmyk.jpg", "JPEG", quality=95)
    save(picture(6), root / "g.png", "PNG")
    full = jpeg(picture(7))
    (root / "h_truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "i_random.jpg").write_bytes(np.random.default_rng(0).bytes(400))
    shipped = ["a_rgb.jpg", "b_grey.jpg", "c_progressive.jpg", "d_exif6.jpg", "e_exif3.jpg"]
    return root, shipped


def test_readers_ship_jpeg_bytes_and_decode_the_rest(jpegs):
    root, shipped = jpegs
    t = ImageTransform(size=(32, 32), resize=36, interpolation="bilinear")
    src = ImageFolderSource(root, transform=t, jpeg_on_device=True)
    plan = src.plan(64)
    batch = next(src.read(plan.shards[0], 64))
    slots = {batch.ids[slot]: (slot, data, o) for slot, data, o in batch.encoded}
    assert sorted(slots) == shipped
    assert slots["d_exif6.jpg"][2] == 6 and slots["e_exif3.jpg"][2] == 3
    for name, (slot, data, _) in slots.items():
        assert data == (root / name).read_bytes()  # the file's bytes, untouched
        assert not batch.data[slot].any()  # nothing decoded in the reader
    png = batch.ids.index("g.png")
    np.testing.assert_array_equal(batch.data[png], decode_image((root / "g.png").read_bytes(), transform=t))
    assert src.fingerprint() != ImageFolderSource(root, transform=t).fingerprint()


@pytest.mark.parametrize("interpolation, workers", [("bilinear", 1), ("bicubic", 0)])
def test_device_decoded_run_matches_the_cpu_run(jpegs, tmp_path, monkeypatch, interpolation, workers):
    """With a reader process (bytes cross a process boundary) and without."""
    root, shipped = jpegs
    enc = small_encoder(interpolation=interpolation)
    opts = RunOptions(batch_size=4, shard_size=8, num_workers=workers, device="cpu", progress=False)
    cpu = extract_collection(f"images:{root}", enc, str(tmp_path / "cpu.parquet"), options=opts)
    monkeypatch.setattr(dd, "unavailable", lambda device, transform: None)
    calls = []
    decoder = reference_decoder()

    def counting(datas, device):
        calls.append(len(datas))
        return decoder(datas, device)

    monkeypatch.setattr(dd, "nvjpeg", counting)
    gpu = extract_collection(f"images:{root}", enc, str(tmp_path / "gpu.parquet"), options=opts, decode="gpu")
    assert sum(calls) == len(shipped)  # every clean JPEG went through the device decoder, in batches
    assert "decode on device" in gpu.timings and cpu.items == gpu.items == 9 and gpu.skipped == cpu.skipped == 2
    assert cpu.timings["decode in readers"] > 0 and "decode on device" not in cpu.timings  # the stages users see
    a, b = pd.read_parquet(tmp_path / "cpu.parquet"), pd.read_parquet(tmp_path / "gpu.parquet")
    assert list(a["id"]) == list(b["id"])
    sa = pd.read_csv(str(tmp_path / "cpu.parquet") + ".status.csv")
    sb = pd.read_csv(str(tmp_path / "gpu.parquet") + ".status.csv")
    assert sa.equals(sb)  # the same skip reasons (truncated, not an image)
    va, vb = np.stack(a["vector"].to_numpy()), np.stack(b["vector"].to_numpy())
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() > 0.999, dict(zip(a["id"], cos))
    same = [i for i, name in enumerate(a["id"]) if name not in shipped]  # decoded in the readers either way
    np.testing.assert_array_equal(va[same], vb[same])


def test_items_the_device_decoder_rejects_are_decoded_on_the_cpu(jpegs):
    root, shipped = jpegs
    t = ImageTransform(size=(32, 32), resize=36, interpolation="bilinear")
    src = ImageFolderSource(root, transform=t, jpeg_on_device=True)
    batch = next(src.read(src.plan(64).shards[0], 64))
    decoder = reference_decoder()

    def picky(datas, device):  # refuses the grey one, like a decoder without that colour space
        if any(bytes(d.numpy()) == (root / "b_grey.jpg").read_bytes() for d in datas):
            raise RuntimeError("unsupported")
        return decoder(datas, device)

    x = torch.from_numpy(batch.data.copy())
    status = ["ok"] * len(batch)
    junk = b"\xff\xd8\xff" + bytes(64) + b"\xff\xd9"  # no decoder takes it: skipped on the CPU too
    dd.fill(x, batch.encoded + [(batch.ids.index("g.png"), junk, 1)], status, transform=t, decoder=picky)
    grey = batch.ids.index("b_grey.jpg")
    np.testing.assert_array_equal(x[grey].numpy(), decode_image((root / "b_grey.jpg").read_bytes(), transform=t))
    assert status[batch.ids.index("g.png")].startswith("skipped:")
    for name in shipped:
        ref = decode_image((root / name).read_bytes(), transform=t).astype(int)
        assert np.abs(x[batch.ids.index(name)].numpy().astype(int) - ref).mean() < 3, name


def test_cli_decode_gpu_without_cuda_warns_and_decodes_on_the_cpu(jpegs, tmp_path, caplog):
    root, _ = jpegs
    args = [
        "extract",
        "--source",
        f"images:{root}",
        "--model",
        "timm:resnet18",
        "--size",
        "32",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli.main(args + ["-o", str(tmp_path / "cpu.parquet")]) == 0
    with caplog.at_level(logging.WARNING):
        assert cli.main(args + ["--decode", "gpu", "-o", str(tmp_path / "gpu.parquet")]) == 0
    assert "--decode gpu: it needs a CUDA device" in caplog.text and "decoding JPEGs on the CPU" in caplog.text
    a, b = pd.read_parquet(tmp_path / "cpu.parquet"), pd.read_parquet(tmp_path / "gpu.parquet")
    assert list(a["id"]) == list(b["id"])
    np.testing.assert_array_equal(np.stack(a["vector"].to_numpy()), np.stack(b["vector"].to_numpy()))


@pytest.mark.gpu
def test_nvjpeg_on_cuda_matches_the_cpu_path(jpegs, tmp_path):
    root, shipped = jpegs
    t = ImageTransform(size=(32, 32), resize=36, interpolation="bilinear")
    assert dd.unavailable(torch.device("cuda"), t) is None
    src = ImageFolderSource(root, transform=t, jpeg_on_device=True)
    batch = next(src.read(src.plan(64).shards[0], 64))
    x = torch.from_numpy(batch.data.copy()).cuda()
    status = ["ok"] * len(batch)
    dd.fill(x, batch.encoded, status, transform=t)
    for name in shipped:
        ref = decode_image((root / name).read_bytes(), transform=t).astype(int)
        diff = np.abs(x[batch.ids.index(name)].cpu().numpy().astype(int) - ref)
        assert diff.mean() < 3, (name, diff.mean())
    enc = small_encoder()
    cpu = extract_collection(f"images:{root}", enc, str(tmp_path / "cpu.parquet"), options=OPTS)
    enc.to("cuda")
    gpu = extract_collection(
        f"images:{root}",
        enc,
        str(tmp_path / "gpu.parquet"),
        decode="gpu",
        options=RunOptions(batch_size=4, shard_size=8, num_workers=0, device="cuda", progress=False),
    )
    assert cpu.items == gpu.items and "decode on device" in gpu.timings
    va = np.stack(pd.read_parquet(tmp_path / "cpu.parquet")["vector"].to_numpy())
    vb = np.stack(pd.read_parquet(tmp_path / "gpu.parquet")["vector"].to_numpy())
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() > 0.999


@pytest.mark.gpu
def test_batches_reach_the_gpu_from_pinned_memory():
    from torch.utils.data import DataLoader

    from nenya.pipeline.items import Batch, Shard

    shard = Shard("g", "", 0, 0, 2)
    batch = Batch(shard, ["a", "b"], np.arange(2), np.arange(2), torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    got = next(iter(DataLoader([batch], batch_size=None, pin_memory=True)))
    assert got.data.is_pinned()
