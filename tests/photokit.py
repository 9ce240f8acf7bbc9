"""Small pictures and a tiny photo encoder, shared by the tests of sources, engines, preprocess and the pipeline.

(``tests/`` has no ``__init__.py``; the root ``conftest.py`` puts ``tests/`` on ``sys.path``.)
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from nenya.encoders import load_encoder
from nenya.encoders.base import EncoderOptions


def picture(seed: int, size=(40, 52)) -> Image.Image:
    """A smooth random picture (JPEG-friendly), different per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size[1], size[0]), Image.BILINEAR)


def save(im: Image.Image, path, fmt: str, **kw) -> None:
    """Save ``im`` at ``path``, making its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, fmt, **kw)


def small_encoder(**kw):
    """timm's resnet18 at 32x32 with seeded random weights, on the CPU."""
    torch.manual_seed(0)
    return load_encoder("timm:resnet18", options=EncoderOptions(size=32, **kw)).to("cpu")


def write_wds(path, samples) -> None:
    """A WebDataset shard: ``samples`` is a list of ``(key, {extension: bytes or JSON-able})``; members
    are written in that order (as WebDataset's TarWriter does: a sample's members together)."""
    import io
    import json
    import tarfile

    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, value in members.items():
                data = value if isinstance(value, bytes) else json.dumps(value).encode()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def write_tfrecord(path, records: list[dict]) -> None:
    """TFRecords written with the tfrecord package's writer: each record a dict name -> (value, kind)."""
    from tfrecord.writer import TFRecordWriter

    w = TFRecordWriter(str(path))
    for r in records:
        w.write(r)
    w.close()


def radar_record(i: int, h: int = 6, w: int = 5) -> dict:
    """An HRRR-like record: reflectivity as a float list, its shape, and two times."""
    ref = np.random.default_rng(i).normal(size=(h, w)).astype(np.float32)
    return {
        "ref": (ref.ravel().tolist(), "float"),
        "size": ([h, w], "int"),
        "time": (f"2021-06-0{i}T00".encode(), "byte"),
        "valid_time": (f"2021-06-0{i}T01".encode(), "byte"),
    }


def sst_field(times: int = 3, h: int = 10, w: int = 12, seed: int = 0):
    """An SST-like (time, lat, lon) field as an xarray Dataset."""
    import xarray as xr

    rng = np.random.default_rng(seed)
    data = rng.normal(size=(times, h, w)).astype(np.float32)
    coords = {
        "time": np.datetime64("2020-01-01") + np.arange(times).astype("timedelta64[D]"),
        "lat": np.linspace(-4.5, 4.5, h),
        "lon": np.linspace(100.0, 111.0, w),
    }
    return xr.Dataset({"sst": (("time", "lat", "lon"), data)}, coords=coords)
