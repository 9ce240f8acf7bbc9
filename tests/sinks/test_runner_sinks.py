"""The runner and the file sinks: layouts, resume after interruption, configuration guard."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import read_partition, reference_latents, save_checkpoint
from nenya._errors import OutputError
from nenya.encoders.supcon import SupConEncoder
from nenya.engines.runner import RunOptions, run
from nenya.extract import extract_preproc
from nenya.sinks.hdf5 import NenyaLatentsSink
from nenya.sources.hdf5 import HDF5PreprocSource, latents_name

OPTS = RunOptions(batch_size=4, shard_size=8, num_workers=0, device="cpu", progress=False)


class CountingEncoder(SupConEncoder):
    """Counts encoded items; raises KeyboardInterrupt (like Ctrl-C) after ``stop_after`` batches."""

    def __init__(self, base: SupConEncoder, stop_after: int | None = None) -> None:
        self.__dict__.update(base.__dict__)
        self.items = 0
        self.calls = 0
        self.stop_after = stop_after

    def encode(self, x):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.items += len(x)
        return super().encode(x)


@pytest.fixture
def encoder(opt, checkpoint):
    return SupConEncoder.from_checkpoint(checkpoint[0], opt).to("cpu")


def test_latents_names():
    assert latents_name("s3://b/MODIS_R2019_2010_preproc_v2.h5") == "MODIS_R2019_2010_latents_v2.h5"
    assert latents_name("/x/cutouts.h5") == "cutouts_latents.h5"
    assert latents_name("/x/a_preproc.h5", ".parquet") == "a_latents.parquet"


def test_parquet_schema_and_values(encoder, checkpoint, preproc, tmp_path):
    out = tmp_path / "pq"
    summary = extract_preproc([str(preproc)], encoder, str(out), fmt="parquet", options=OPTS)
    path = out / "tiny_latents_test.parquet"
    assert summary.outputs == [str(path)] and summary.items == 58
    table = pq.read_table(path)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)
    assert table.column_names[:3] == ["id", "partition", "row"]
    assert {"lat", "lon", "datetime", "pattern"} <= set(table.column_names)
    df = table.to_pandas()
    assert list(df["partition"].unique()) == ["train", "valid"]
    valid = df[df.partition == "valid"]
    assert list(valid["row"]) == list(range(37)) and valid["id"].iloc[3] == "valid/3"
    ref = reference_latents(checkpoint[1], read_partition(preproc, "valid"))
    np.testing.assert_allclose(np.stack(valid["vector"].to_numpy()), ref, atol=1e-5)
    assert not os.path.exists(out / ".nenya-work")  # work folder removed once published


def test_interrupted_run_leaves_no_output_and_resumes_only_unfinished(encoder, preproc, tmp_path):
    reference = extract_preproc([str(preproc)], encoder, str(tmp_path / "ref"), options=OPTS).outputs[0]
    out = tmp_path / "out"
    first = CountingEncoder(encoder, stop_after=5)  # shards hold 2 batches: 2 shards commit, 1 is in flight
    with pytest.raises(KeyboardInterrupt):
        extract_preproc([str(preproc)], first, str(out), options=OPTS)
    final = out / "tiny_latents_test.h5"
    assert not final.exists()
    work = out / ".nenya-work" / "tiny_latents_test.h5"
    assert len([n for n in os.listdir(work) if n.endswith(".done.json")]) == 2
    second = CountingEncoder(encoder)
    summary = extract_preproc([str(preproc)], second, str(out), options=OPTS)
    assert summary.shards_already_done == 2
    assert second.items == 58 - 16  # only the unfinished shards were encoded again
    for p in ("train", "valid"):
        np.testing.assert_array_equal(read_partition(final, p), read_partition(reference, p))


def test_other_model_into_unfinished_output_is_refused(opt, encoder, preproc, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        extract_preproc([str(preproc)], CountingEncoder(encoder, stop_after=3), str(out), options=OPTS)
    other_ckpt = tmp_path / "other.pth"
    save_checkpoint(opt, other_ckpt, seed=42)
    other = SupConEncoder.from_checkpoint(other_ckpt, opt).to("cpu")
    with pytest.raises(OutputError, match=r"different model.*--overwrite \(in Python: overwrite=True, or clobber=True"):
        extract_preproc([str(preproc)], other, str(out), options=OPTS)
    summary = extract_preproc([str(preproc)], other, str(out), options=OPTS, clobber=True)
    assert summary.shards_already_done == 0 and summary.items == 58


def test_orphaned_temporaries_are_cleaned(encoder, preproc, tmp_path):
    out = tmp_path / "out"
    work = out / ".nenya-work" / "tiny_latents_test.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_preproc([str(preproc)], CountingEncoder(encoder, stop_after=3), str(out), options=OPTS)
    orphan = work / ".valid-000003.arrow.tmp-deadbeef"
    orphan.write_bytes(b"partial")
    extract_preproc([str(preproc)], encoder, str(out), options=OPTS)
    assert not orphan.exists() and (out / "tiny_latents_test.h5").exists()


def test_h5_is_streamed_per_shard_with_workers(encoder, checkpoint, preproc, tmp_path):
    options = RunOptions(batch_size=5, shard_size=10, num_workers=2, device="cpu", progress=False)
    source = HDF5PreprocSource([str(preproc)])
    summary = run(source, encoder, NenyaLatentsSink(tmp_path / "w"), options)
    source.close()
    assert summary.shards == 4 + 3  # valid 37 -> 4 shards of 10, train 21 -> 3
    assert set(summary.timings) >= {"read", "encode", "write"}
    with h5py.File(summary.outputs[0]) as f:
        np.testing.assert_allclose(
            f["valid"][:], reference_latents(checkpoint[1], read_partition(preproc, "valid")), atol=1e-5
        )
        assert "valid_rows" not in f  # all rows, in order


def test_bf16_is_close_to_fp32(opt, checkpoint, preproc, tmp_path):
    fp32 = SupConEncoder.from_checkpoint(checkpoint[0], opt).to("cpu", "fp32")
    bf16 = SupConEncoder.from_checkpoint(checkpoint[0], opt).to("cpu", "bf16")
    x = torch.from_numpy(read_partition(preproc, "valid")[:8])
    a, b = fp32.encode(x), bf16.encode(x)
    assert b.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a, b).mean().item()
    assert 0.99 < cos <= 1.0001
    assert not torch.equal(a, b)  # bf16 really ran
