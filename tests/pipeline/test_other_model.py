"""An existing output made by another model is refused whenever it exists, also when there is
nothing new to encode (the run would otherwise say "nothing to do" over another model's vectors);
the same model again still has nothing to do."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pandas as pd
import pytest

from conftest import make_opts, save_checkpoint
from nenya._errors import OutputError
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection, extract_preproc
from nenya.params import Params, option_preprocess
from photokit import picture, save, small_encoder

ENV = dict(os.environ, TQDM_DISABLE="1")
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NENYA_JOB_ID", "NENYA_FAULTS"):
    ENV.pop(_k, None)
OPTS = RunOptions(batch_size=4, shard_size=8, num_workers=0, device="cpu", progress=False)


def nenya(*args):
    cmd = [sys.executable, "-m", "nenya", "extract", *map(str, args), "--workers", "0", "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for i in range(5):
        save(picture(i), root / f"{i:02d}.png", "PNG")
    return root


def test_images_output_of_another_model_is_refused_with_nothing_new(photos, tmp_path):
    out = tmp_path / "vectors.parquet"
    first = nenya("--source", f"images:{photos}", "--model", "timm:resnet18", "--size", 32, "-o", out)
    assert first.returncode == 0, first.stderr
    before = pd.read_parquet(out)
    r = nenya("--source", f"images:{photos}", "--model", "timm:efficientnet_b0", "--size", 32, "-o", out)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{out} holds vectors of another model" in r.stderr and "timm:efficientnet_b0" in r.stderr, r.stderr
    assert "--clobber" in r.stderr and "another output" in r.stderr and "nothing new" not in r.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(out), before)  # untouched
    same = nenya("--source", f"images:{photos}", "--model", "timm:resnet18", "--size", 32, "-o", out)
    assert same.returncode == 0 and "nothing new to encode" in same.stdout, same.stderr


def test_images_python_api_refuses_the_same_way(photos, tmp_path):
    out = str(tmp_path / "v.npy")
    extract_collection(f"images:{photos}", small_encoder(), out, options=OPTS)
    other = small_encoder(interpolation="bilinear")  # the same weights, another preprocessing
    with pytest.raises(OutputError, match=r"v\.npy holds vectors of another model or preprocessing"):
        extract_collection(f"images:{photos}", other, out, options=OPTS)
    assert extract_collection(f"images:{photos}", small_encoder(), out, options=OPTS).items == 0
    assert extract_collection(f"images:{photos}", other, out, options=OPTS, overwrite=True).items == 5


def checkpoint_of_dim(folder, feat_dim: int):
    folder.mkdir()
    opt = option_preprocess(Params(make_opts(folder, feat_dim=feat_dim)))
    path = folder / opt.model_folder / "last.pth"
    save_checkpoint(opt, path)
    return path


def test_preproc_output_of_another_model_is_refused_with_nothing_to_do(preproc, tmp_path):
    a, b = checkpoint_of_dim(tmp_path / "a", 16), checkpoint_of_dim(tmp_path / "b", 8)
    out = tmp_path / "out"
    first = nenya(preproc, "--model", f"supcon:{a}", "--output", out)
    assert first.returncode == 0, first.stderr
    latents = out / "tiny_latents_test.h5"
    r = nenya(preproc, "--model", f"supcon:{b}", "--output", out)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{latents} holds vectors of another model" in r.stderr and "16-d" in r.stderr and "8-d" in r.stderr
    assert "--clobber" in r.stderr and "nothing to do" not in r.stdout, r.stderr
    same = nenya(preproc, "--model", f"supcon:{a}", "--output", out)
    assert same.returncode == 0 and "nothing to do" in same.stdout, same.stderr
    redo = nenya(preproc, "--model", f"supcon:{b}", "--output", out, "--clobber")
    assert redo.returncode == 0, redo.stderr
    with h5py.File(latents) as f:
        assert f["valid"].shape == (37, 8)


def test_preproc_refuses_before_encoding_the_other_files(preproc, tmp_path):
    """One output of another model in the folder: nothing is encoded into it for the new files either."""
    from nenya.encoders import load_encoder

    a, b = checkpoint_of_dim(tmp_path / "a", 16), checkpoint_of_dim(tmp_path / "b", 8)
    out = tmp_path / "out"
    extract_preproc([str(preproc)], load_encoder(f"supcon:{a}").to("cpu"), str(out), options=OPTS)
    second = preproc.parent / "more_preproc_test.h5"
    second.write_bytes(preproc.read_bytes())
    with pytest.raises(OutputError, match="tiny_latents_test.h5 holds vectors of another model"):
        extract_preproc([str(preproc), str(second)], load_encoder(f"supcon:{b}").to("cpu"), str(out), options=OPTS)
    assert sorted(os.listdir(out)) == ["tiny_latents_test.h5", "tiny_latents_test.h5.status.csv"]
