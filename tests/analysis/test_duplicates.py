"""Near-duplicates and leakage (nenya.analysis.duplicates, `nenya duplicates`): planted copies are found."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nenya.analysis.duplicates import find_duplicates
from nenya.cli import main
from photokit import picture, save


def _planted_table(tmp_path):
    """60 distinct photos (40 train, 20 valid) plus planted near-duplicates: an exact copy, a JPEG at quality
    50, a smaller resized copy, and a valid copy of a train photo (leakage)."""
    root = tmp_path / "photos"
    rows = []
    for i in range(60):
        p = root / f"img{i:03d}.png"
        save(picture(100 + i, size=(72, 96)), p, "PNG")
        rows.append((str(p), "train" if i < 40 else "valid"))

    def plant(src: int, name: str, split: str, fmt: str, **kw) -> tuple[str, str]:
        im = Image.open(root / f"img{src:03d}.png").convert("RGB")
        if "size" in kw:
            im = im.resize(kw.pop("size"))
        save(im, root / name, fmt, **kw)
        rows.append((str(root / name), split))
        return str(root / f"img{src:03d}.png"), str(root / name)

    planted = {
        plant(0, "copy000.png", "train", "PNG"),
        plant(1, "jpeg001.jpg", "train", "JPEG", quality=50),
        plant(2, "small002.png", "train", "PNG", size=(72, 54)),
        plant(3, "leak003.jpg", "valid", "JPEG", quality=80),
    }
    table = tmp_path / "photos.csv"
    pd.DataFrame(rows, columns=["path", "split"]).to_csv(table, index=False)
    return table, planted


def _pairs(path) -> set[tuple[str, str]]:
    groups = pd.read_parquet(path)
    out = set()
    for _, g in groups.groupby("group"):
        ids = sorted(g["id"])
        out |= {(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]}
    return out


@pytest.mark.parametrize("how", [["--auto"], ["--threshold", "0.15"]])
def test_planted_photo_duplicates_and_leakage_are_found(tmp_path, how, capsys):
    table, planted = _planted_table(tmp_path)
    vectors = tmp_path / "v.parquet"
    args = ["extract", "--source", f"table:{table}", "--model", "timm:resnet18", "--size", "64"]
    assert main([*args, "-o", str(vectors), "--no-progress", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["duplicates", str(vectors), *how, "--split-column", "split", "--no-progress"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "v_duplicates.parquet"), str(tmp_path / "v_leakage.parquet")]
    found = _pairs(out[0])
    want = {tuple(sorted(p)) for p in planted}
    assert want <= found, f"missed {want - found}"
    assert len(found & want) >= 0.95 * len(found)
    groups = pd.read_parquet(out[0])
    assert set(groups.columns) == {"id", "group", "representative", "distance"}
    assert (groups.groupby("group")["representative"].nunique() == 1).all()
    leak = pd.read_parquet(out[1])
    assert len(leak) == 1
    assert {leak["id_a"][0], leak["id_b"][0]} == {
        os.path.join(table.parent, "photos", n) for n in ("img003.png", "leak003.jpg")
    }
    assert {leak["split_a"][0], leak["split_b"][0]} == {"train", "valid"}


def test_flat_and_ivf_agree_and_cosine_works():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 24)).astype(np.float32)
    src = rng.choice(6000, 50, replace=False)
    copies = x[src] + rng.normal(scale=1e-3, size=(50, 24)).astype(np.float32)
    vectors = np.concatenate([x, copies])
    ids = np.array([f"v{i}" for i in range(len(vectors))], dtype=object)
    want = {(f"v{a}", f"v{6000 + j}") for j, a in enumerate(src)}
    for kw in ({}, {"ivf_above": 1000}):
        r = find_duplicates((ids, vectors), threshold=0.05, progress=False, **kw)
        assert set(zip(r.pairs["id_a"], r.pairs["id_b"])) == want
        assert len(r.groups) == 100 and r.groups["group"].nunique() == 50 and r.leakage is None
        # distances are Euclidean, and each member's distance to its representative is right
        np.testing.assert_allclose(
            r.pairs["distance"],
            np.linalg.norm(
                vectors[[int(a[1:]) for a in r.pairs["id_a"]]] - vectors[[int(b[1:]) for b in r.pairs["id_b"]]], axis=1
            ),
            rtol=1e-3,
            atol=1e-5,
        )
    cos = find_duplicates(
        (ids, vectors * rng.uniform(0.5, 2.0, (len(vectors), 1)).astype(np.float32)),
        threshold=1e-4,
        metric="cosine",
        progress=False,
    )
    assert set(zip(cos.pairs["id_a"], cos.pairs["id_b"])) == want  # scale does not matter for cosine
    auto = find_duplicates((ids, vectors), auto=True, progress=False)
    assert set(zip(auto.pairs["id_a"], auto.pairs["id_b"])) == want and auto.how.startswith("auto:")
    with pytest.raises(ValueError, match="threshold or auto"):
        find_duplicates((ids, vectors), progress=False)
    with pytest.raises(ValueError, match="no column 'split'"):
        find_duplicates((ids, vectors), threshold=0.1, split_column="split", progress=False)


def test_the_search_shows_items_searched_or_no_bar(capsys):
    x = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    ids = np.array([f"i{i}" for i in range(3000)], dtype=object)
    find_duplicates((ids, x), threshold=0.01)
    err = capsys.readouterr().err
    assert "near-duplicate search: 100%" in err and "3000/3000" in err and "0/1 " not in err, err
    find_duplicates((ids[:300], x[:300]), threshold=0.01)  # one chunk: no bar that jumps to its end
    assert "near-duplicate search" not in capsys.readouterr().err


@pytest.mark.parametrize("share", [0.56, 0.01])
def test_auto_finds_near_duplicates_whether_rare_or_most_of_the_collection(share):
    """--auto cuts at the gap between near-duplicates and the rest of the nearest-neighbour distances:
    with 56% of the items in planted pairs (where a rule that assumes duplicates are rare finds none) and
    with 1%, every planted pair is found and at least 95% of the pairs reported are planted."""
    rng = np.random.default_rng(7)
    n, d = 8000, 32
    centres = rng.normal(0, 3, (16, d))
    x = (centres[rng.integers(0, 16, n)] + rng.normal(size=(n, d))).astype(np.float32)
    m = int(share * n / 2)
    perm = rng.permutation(n)[: 2 * m]
    a, b = perm[:m], perm[m:]
    noise = np.exp(rng.uniform(np.log(0.005), np.log(0.05), (m, 1)))  # pair distances 0.03 to 0.3
    x[b] = x[a] + (rng.normal(size=(m, d)) * noise).astype(np.float32)
    ids = np.array([f"v{i}" for i in range(n)], dtype=object)
    want = {(f"v{min(i, j)}", f"v{max(i, j)}") for i, j in zip(a, b)}
    r = find_duplicates((ids, x), auto=True, progress=False)
    got = {tuple(sorted(p, key=lambda s: int(s[1:]))) for p in zip(r.pairs["id_a"], r.pairs["id_b"])}
    assert want <= got, f"missed {len(want - got)} of {len(want)} planted pairs ({r.how})"
    assert len(got & want) >= 0.95 * len(got), r.how
    assert "widest gap" in r.how and f"{2 * m:,} items below" in r.how
    # no near-duplicates at all: no gap, the robust rule, and (almost) nothing reported
    clean = find_duplicates((ids[:4000], np.delete(x, b, axis=0)[:4000]), auto=True, progress=False)
    assert "no gap" in clean.how and len(clean.pairs) <= 2
