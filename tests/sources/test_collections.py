"""Image collections end to end: folders and path tables -> Parquet / npy, tiles, resume by id."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from nenya.encoders import load_encoder
from nenya.encoders.base import EncoderOptions
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection
from nenya.preprocess.cpu import decode_image
from photokit import picture, save, small_encoder

OPTS = RunOptions(batch_size=4, shard_size=4, num_workers=0, device="cpu", progress=False)


@pytest.fixture
def corpus(tmp_path):
    """Good images of every mode plus every kind of bad file; returns (folder, good ids, bad ids -> reason)."""
    root = tmp_path / "photos"
    save(picture(0), root / "a_rgb.jpg", "JPEG", quality=95)
    save(picture(1), root / "nested" / "deeper" / "b_rgb.png", "PNG")
    save(picture(2).convert("CMYK"), root / "c_cmyk.jpg", "JPEG", quality=95)
    save(picture(3).convert("RGBA"), root / "d_rgba.png", "PNG")
    save(picture(4).convert("P"), root / "e_palette.png", "PNG")
    grey16 = Image.fromarray(np.asarray(picture(5).convert("L"), dtype=np.uint16) * 257)
    assert grey16.mode.startswith("I;16")
    save(grey16, root / "f_16bit.png", "PNG")
    base = picture(6)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save(base, root / "g_exif.png", "PNG", exif=exif.tobytes())
    save(base.transpose(Image.Transpose.ROTATE_270), root / "g_rotated.png", "PNG")  # the same, physically rotated
    good = [
        "a_rgb.jpg",
        "c_cmyk.jpg",
        "d_rgba.png",
        "e_palette.png",
        "f_16bit.png",
        "g_exif.png",
        "g_rotated.png",
        "nested/deeper/b_rgb.png",
    ]
    buf = io.BytesIO()
    picture(7).save(buf, "JPEG")
    (root / "h_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "i_empty.png").write_bytes(b"")
    (root / "j_random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "k_text.png").write_text("not an image at all\n")
    save(picture(8, size=(400, 400)), root / "l_huge.png", "PNG")  # over the pixel limit set below
    (root / "notes.txt").write_text("ignored: not an image extension")
    bad = {
        "h_truncated.jpg": "truncated",
        "i_empty.png": "empty file",
        "j_random.jpg": "not an image",
        "k_text.png": "not an image",
        "l_huge.png": "pixel limit",
    }
    return root, sorted(good), bad


def test_folder_with_bad_files_cli(corpus, tmp_path, monkeypatch):
    root, good, bad = corpus
    out = tmp_path / "out" / "vectors.parquet"
    cmd = [
        sys.executable,
        "-m",
        "nenya",
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
        "1",
        "--max-pixels",
        "100000",
        "--output",
        str(out),
        "--no-progress",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{len(good) + len(bad)} images in" in r.stdout and f"{len(bad)} skipped" in r.stdout
    df = pd.read_parquet(out)
    assert sorted(df["id"]) == good and df["id"].is_unique  # every good image exactly once, by file name
    assert list(df.columns) == ["id", "path", "vector"]
    assert all(p.endswith(i) for p, i in zip(df["path"], df["id"]))
    status = pd.read_csv(str(out) + ".status.csv")
    assert sorted(status["id"]) == sorted(good + list(bad))  # every listed file exactly once
    reasons = dict(zip(status["id"], status["status"]))
    for name, why in bad.items():
        assert reasons[name].startswith(f"skipped:{why}"), (name, reasons[name])
    vec = dict(zip(df["id"], np.stack(df["vector"].to_numpy())))
    np.testing.assert_allclose(vec["g_exif.png"], vec["g_rotated.png"], atol=1e-6)  # EXIF applied
    enc = small_encoder()  # same seed-0 random weights as the CLI's model
    for name in good:  # vectors equal the encoder on the decoded image: aligned by id
        x = decode_image((root / name).read_bytes(), transform=enc.preprocess.image)
        ref = enc.encode(torch.from_numpy(x[None])).numpy()[0]
        np.testing.assert_allclose(vec[name], ref, atol=2e-5, err_msg=name)


def test_resume_by_id_encodes_only_new_images(tmp_path):
    root = tmp_path / "grow"
    for i in range(6):
        save(picture(i), root / f"{i:02d}.png", "PNG")
    enc = small_encoder()
    counted = []
    original = enc.encode
    enc.encode = lambda x: (counted.append(len(x)), original(x))[1]
    out = str(tmp_path / "v.parquet")
    s1 = extract_collection(f"images:{root}", enc, out, options=OPTS)
    assert s1.items == 6 and sum(counted) == 6
    for i in range(6, 9):  # the folder grows
        save(picture(i), root / f"{i:02d}.png", "PNG")
    counted.clear()
    s2 = extract_collection(f"images:{root}", enc, out, options=OPTS)
    assert s2.items == 3 and sum(counted) == 3  # only the new ones were encoded
    df = pd.read_parquet(out)
    assert list(df["id"]) == [f"{i:02d}.png" for i in range(9)] and df["id"].is_unique
    counted.clear()
    assert extract_collection(f"images:{root}", enc, out, options=OPTS).items == 0 and sum(counted) == 0
    fresh = str(tmp_path / "fresh.parquet")
    extract_collection(f"images:{root}", enc, fresh, options=OPTS)  # one uninterrupted run: same vectors
    # (up to float rounding: the images were batched differently)
    np.testing.assert_allclose(np.stack(pd.read_parquet(fresh)["vector"]), np.stack(df["vector"]), atol=1e-6)
    status = pd.read_csv(out + ".status.csv")
    assert list(status["id"]) == list(df["id"]) and set(status["status"]) == {"ok"}


def test_tiles_parquet_and_npy_same_rows(tmp_path):
    import timm

    root = tmp_path / "tiles"
    for i in range(3):
        save(picture(i, size=(64, 64)), root / f"t{i}.png", "PNG")
    torch.manual_seed(0)
    enc = load_encoder("timm:efficientnet_b0", options=EncoderOptions(layer=4, pool="none", size=64)).to("cpu")
    rows, cols = enc.grid
    extract_collection(f"images:{root}", enc, str(tmp_path / "t.parquet"), options=OPTS)
    extract_collection(f"images:{root}", enc, str(tmp_path / "n" / "t.npy"), options=OPTS)
    df = pd.read_parquet(tmp_path / "t.parquet")
    assert list(df.columns) == ["id", "path", "tile_x", "tile_y", "vector"]
    assert len(df) == 3 * rows * cols
    first = df[df["id"] == "t0.png"]
    assert list(first.index) == list(range(rows * cols))  # an image's tiles together, in row-major order
    assert list(zip(first["tile_y"], first["tile_x"])) == [(y, x) for y in range(rows) for x in range(cols)]
    # tile (x, y) is the feature map's position at that level
    torch.manual_seed(0)
    ref_model = timm.create_model("efficientnet_b0", features_only=True, out_indices=(4,)).eval()
    x = decode_image((root / "t0.png").read_bytes(), transform=enc.preprocess.image)
    with torch.no_grad():
        fmap = ref_model(enc.prepare(torch.from_numpy(x[None])))[0][0]  # (C, rows, cols)
    got = np.stack(first["vector"].to_numpy())
    for _, r in first.iterrows():
        np.testing.assert_allclose(r["vector"], fmap[:, r["tile_y"], r["tile_x"]].numpy(), atol=1e-4)
    assert got.shape == (rows * cols, fmap.shape[0])
    vectors = np.load(tmp_path / "n" / "t.npy")
    meta = pd.read_parquet(tmp_path / "n" / "t.parquet")
    assert vectors.shape == (len(df), enc.dim) and "vector" not in meta.columns
    assert list(meta["id"]) == list(df["id"]) and list(meta["tile_x"]) == list(df["tile_x"])
    np.testing.assert_array_equal(vectors, np.stack(df["vector"]))


def test_path_table_carries_typed_metadata_and_reads_everywhere(tmp_path):
    import duckdb

    imgs = tmp_path / "imgs"
    for i in range(5):
        save(picture(i), imgs / f"p{i}.jpg", "JPEG")
    table = pd.DataFrame(
        {
            "image_id": [f"id-{i}" for i in range(5)],
            "file": [f"imgs/p{i}.jpg" if i % 2 else str(imgs / f"p{i}.jpg") for i in range(5)],
            "label": [i % 2 for i in range(5)],
            "hotel": [f"h{i // 2}" for i in range(5)],
            "score": np.linspace(0, 1, 5),
        }
    )
    table.loc[4, "file"] = "imgs/missing.jpg"
    csv = tmp_path / "images.csv"
    table.to_csv(csv, index=False)
    enc = small_encoder()
    out = tmp_path / "v16.parquet"
    extract_collection(
        f"table:{csv}", enc, str(out), options=OPTS, path_column="file", id_column="image_id", dtype="float16"
    )
    schema = pq.read_schema(out)
    assert schema.names == ["id", "path", "label", "hotel", "score", "vector"]
    assert schema.field("label").type == pa.int64() and schema.field("score").type == pa.float64()
    assert schema.field("vector").type == pa.list_(pa.float16(), enc.dim)
    df = pd.read_parquet(out)
    assert list(df["id"]) == ["id-0", "id-1", "id-2", "id-3"] and list(df["label"]) == [0, 1, 0, 1]
    status = pd.read_csv(str(out) + ".status.csv")
    assert status.set_index("id").loc["id-4", "status"].startswith("skipped:missing file")
    n = duckdb.sql(f"select count(*), count(distinct id), max(len(vector)) from '{out}'").fetchall()[0]
    assert n == (4, 4, enc.dim)
    assert pq.read_table(out).num_rows == 4


def test_source_options_as_one_object_equal_the_keywords(tmp_path):
    """The CLI hands SourceOptions down whole; Python callers may give the same as keywords: same output.
    Both at once is a TypeError that names the way out."""
    from nenya.sources import SourceOptions

    imgs = tmp_path / "imgs"
    for i in range(4):
        save(picture(i), imgs / f"p{i}.png", "PNG")
    csv = tmp_path / "t.csv"
    pd.DataFrame({"uid": [f"u{i}" for i in range(4)], "file": [str(imgs / f"p{i}.png") for i in range(4)],
                  "label": list("abab")}).to_csv(csv, index=False)  # fmt: skip
    enc = small_encoder()
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    extract_collection(f"table:{csv}", enc, str(a), options=OPTS, path_column="file", id_column="uid")
    whole = SourceOptions(path_column="file", id_column="uid")
    extract_collection(f"table:{csv}", enc, str(b), options=OPTS, source_options=whole)
    ta, tb = pd.read_parquet(a), pd.read_parquet(b)
    assert list(ta["id"]) == ["u0", "u1", "u2", "u3"] and ta.drop(columns="vector").equals(tb.drop(columns="vector"))
    assert np.array_equal(np.stack(ta["vector"]), np.stack(tb["vector"]))
    with pytest.raises(TypeError, match="either source_options"):
        extract_collection(f"table:{csv}", enc, str(tmp_path / "c.parquet"), source_options=whole, id_column="uid")


def test_output_name_must_stay_in_folder(tmp_path):
    from nenya._errors import OutputError
    from nenya.extract import split_output

    assert split_output(str(tmp_path / "x.npy")) == (str(tmp_path), "x.npy", "npy")
    assert split_output(str(tmp_path) + "/") == (str(tmp_path), "vectors.parquet", "parquet")
    with pytest.raises(ValueError, match="parquet or .npy|\\*.parquet"):
        split_output(str(tmp_path / "x.txt"))
    with pytest.raises(OutputError):
        split_output("s3://bucket/" + "x" * 300 + ".parquet")
