"""What the extraction jobs (nenya.extract) log about existing outputs: how to redo a finished one, and
what an output being extended already holds."""

from __future__ import annotations

import logging

from nenya.encoders.supcon import SupConEncoder
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection, extract_preproc
from photokit import picture, save, small_encoder

OPTS = RunOptions(batch_size=4, num_workers=0, device="cpu", progress=False)


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nenya.extract"]


def test_a_finished_output_is_skipped_saying_the_cli_flag_and_the_python_argument(
    opt, checkpoint, preproc, tmp_path, caplog
):
    enc = SupConEncoder.from_checkpoint(checkpoint[0], opt).to("cpu")
    extract_preproc([str(preproc)], enc, str(tmp_path / "out"), options=OPTS)
    with caplog.at_level(logging.INFO, logger="nenya.extract"):
        assert extract_preproc([str(preproc)], enc, str(tmp_path / "out"), options=OPTS).outputs == []
    (line,) = [m for m in _messages(caplog) if m.startswith("skipping")]
    assert "--clobber" in line and "clobber=True" in line and "use clobber" not in line


def test_an_output_being_extended_counts_its_vectors_and_its_skipped_items_apart(tmp_path, caplog):
    root = tmp_path / "photos"
    for i in range(3):
        save(picture(i), str(root / f"p{i}.png"), "PNG")
    (root / "broken.png").write_bytes(b"\x00" * 300)  # skipped, and listed in the status table
    enc = small_encoder()
    out = str(tmp_path / "vectors.parquet")
    assert extract_collection(f"images:{root}", enc, out, options=OPTS).skipped == 1
    save(picture(3), str(root / "p3.png"), "PNG")
    with caplog.at_level(logging.INFO, logger="nenya.extract"):
        assert extract_collection(f"images:{root}", enc, out, options=OPTS).items == 1
    (line,) = [m for m in _messages(caplog) if "exists with" in m]
    assert "vectors of 3 items and 1 skipped" in line and "4 ids" not in line, line
