"""The Lance sink beyond the contract: LanceDB opens the output unchanged and its nearest-neighbour
search returns the ids nenya's FAISS search returns; the same run as Parquet reads back identically;
`nenya index`, `search` and `explore` read the dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nenya.analysis import read_about, read_latents
from nenya.cli import main
from nenya.extract import extract_collection
from photokit import picture, save, small_encoder

lancedb = pytest.importorskip("lancedb")


@pytest.fixture
def outputs(tmp_path):
    root = tmp_path / "photos"
    for i in range(24):
        save(picture(i, size=(40 + i, 36)), str(root / f"p{i:02d}.png"), "PNG")
    enc = small_encoder()
    for ext in ("lance", "parquet"):
        extract_collection(f"images:{root}", enc, str(tmp_path / f"vectors.{ext}"))
    return tmp_path


def test_lancedb_search_returns_the_ids_of_nenyas_faiss_search(outputs, capsys):
    ids, vectors, meta = read_latents(outputs / "vectors.lance")
    p_ids, p_vectors, p_meta = read_latents(outputs / "vectors.parquet")
    assert list(ids) == list(p_ids) and meta.equals(p_meta)
    np.testing.assert_array_equal(vectors, p_vectors)
    assert read_about(outputs / "vectors.lance")["dim"] == vectors.shape[1]

    table = lancedb.connect(str(outputs)).open_table("vectors")
    assert table.count_rows() == 24 and set(table.schema.names) >= {"id", "path", "vector"}
    assert main(["index", str(outputs / "vectors.lance")]) == 0
    capsys.readouterr()
    for q in (0, 7, 19):
        hits = table.search(vectors[q]).distance_type("l2").limit(7).to_pandas()
        assert hits["id"].iloc[0] == ids[q] and hits["_distance"].iloc[0] == pytest.approx(0, abs=1e-4)
        hits = hits.iloc[1:]  # nenya's search by id leaves the item itself out
        assert main(["search", str(outputs / "vectors.faiss"), "--id", str(ids[q]), "-k", "6"]) == 0
        ours = pd.read_parquet(capsys.readouterr().out.strip())
        assert list(hits["id"]) == list(ours["id"]), q
        np.testing.assert_allclose(hits["_distance"], ours["score"], rtol=1e-4, atol=1e-5)


def test_explore_reads_the_dataset(outputs, capsys):
    assert main(["pca", str(outputs / "vectors.lance"), "-n", "2"]) == 0
    coords = capsys.readouterr().out.strip().splitlines()[-1]
    page = outputs / "page.html"
    assert main(["explore", str(outputs / "vectors.lance"), "--coords", coords, "-o", str(page)]) == 0
    assert (outputs / "page.html").stat().st_size > 10_000


def test_a_new_dataset_is_written_without_lances_warning_that_it_will_be_created(tmp_path, capfd):
    root = tmp_path / "photos"
    for i in range(3):
        save(picture(i), str(root / f"p{i}.png"), "PNG")
    enc = small_encoder()
    capfd.readouterr()
    extract_collection(f"images:{root}", enc, str(tmp_path / "vectors.lance"))  # new
    save(picture(3), str(root / "p3.png"), "PNG")
    extract_collection(f"images:{root}", enc, str(tmp_path / "vectors.lance"))  # appended
    extract_collection(f"images:{root}", enc, str(tmp_path / "vectors.lance"), overwrite=True)  # replaced
    err = capfd.readouterr().err
    assert "No existing dataset" not in err and "WARN" not in err, err
    assert lancedb.connect(str(tmp_path)).open_table("vectors").count_rows() == 4


def test_a_dataset_killed_before_its_first_commit_is_written_anew(tmp_path):
    """Lance writes in place: a run killed during its first write leaves data files and no version.
    The next run must not try to read it (as an output that holds ids, or a model record)."""
    import shutil

    root = tmp_path / "photos"
    for i in range(3):
        save(picture(i), str(root / f"p{i}.png"), "PNG")
    enc = small_encoder()
    out = tmp_path / "vectors.lance"
    extract_collection(f"images:{root}", enc, str(out))
    shutil.rmtree(out / "_versions")  # as if killed before the commit: data files, no manifest
    (tmp_path / "vectors.lance.status.csv").unlink()
    extract_collection(f"images:{root}", enc, str(out))
    assert lancedb.connect(str(tmp_path)).open_table("vectors").count_rows() == 3
