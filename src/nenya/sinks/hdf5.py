"""Nenya ``_latents.h5`` files: ``valid``/``train`` (N, feat_dim) float32 in input row order."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow as pa

import nenya
from nenya.pipeline import faults, storage
from nenya.pipeline.items import Group
from nenya.sinks import vectors_of
from nenya.sinks.parquet import ABOUT_KEY, parse_about
from nenya.sinks.parts import PartSink


def _text(column: pa.ChunkedArray, days_only: bool) -> np.ndarray:
    """A metadata column as Nenya's text (the source may have typed it): numbers as numpy prints them,
    times as pandas does (``2003-01-01 00:25:00``, ``.500000`` when there is a fraction), or as days
    (``2010-01-05``) where every time of the output's column is a midnight."""
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype.kind != "M":
        return values.astype(str)
    text = np.datetime_as_string(values, unit="D" if days_only else "us")
    if not days_only:
        text = np.where(np.isnat(values), "NaT", np.char.replace(np.char.replace(text, ".000000", ""), "T", " "))
    return text


class NenyaLatentsSink(PartSink):
    """One latents HDF5 per input file, Nenya's layout (§2 of the formats doc).

    Each partition ``p`` becomes a dataset ``p`` of shape (N, dim), float32, filled part by part
    (streamed: never the whole file in memory). ``p_metadata`` (fixed-length byte strings, column
    names in its ``columns`` attribute) is carried over when the input has it; ``p_rows`` holds the
    input rows when only some were selected; ``p_valid`` marks rows whose item was skipped (their
    vector is zero, never NaN).
    """

    ext = ".h5"
    collections = False  # one file per preproc input, Nenya's layout
    supports_tiles = False

    def recorded_model(self, name: str) -> dict | None:
        """The model record in the ``nenya`` attribute of the latents file ``name``."""
        dest = storage.join(self.output, name)
        if not storage.exists(dest):
            return None
        fs, path = storage.url_to_fs(dest)
        try:
            with fs.open(path, "rb") as fh, h5py.File(fh, "r") as f:
                return parse_about(f.attrs.get(ABOUT_KEY.decode()))
        except (OSError, ValueError):  # not an HDF5 file: nothing recorded
            return None

    def _days_only(self, parts: list[str], cols: list[str]) -> dict[str, bool]:
        """Per metadata column: whether it holds times that are all midnights (written as days)."""
        days = dict.fromkeys(cols, True)
        for part in parts:
            t = self.read_part(part)
            for c in cols:
                values = t.column(f"meta:{c}").to_numpy(zero_copy_only=False)
                if values.dtype.kind != "M":
                    days[c] = False
                elif days[c]:
                    times = values[~np.isnat(values)]
                    days[c] = bool((times == times.astype("datetime64[D]")).all())
        return days

    def assemble(self, group: Group, path: str) -> None:
        with h5py.File(path, "w") as f:
            f.attrs["nenya_version"] = nenya.__version__
            f.attrs["source"] = storage.redact(group.url)
            f.attrs[ABOUT_KEY.decode()] = json.dumps(self._about)
            for p, n in group.partitions.items():
                parts = self.parts(group, p)
                dset = f.create_dataset(p, (n, self._dim), dtype="float32")
                cols = group.metadata_columns.get(p) or []
                widths = np.zeros(len(cols), dtype=int)
                days = self._days_only(parts, cols)
                if cols:
                    for part in parts:
                        t = self.read_part(part)
                        for j, c in enumerate(cols):
                            lengths = np.char.str_len(np.char.encode(_text(t.column(f"meta:{c}"), days[c]), "utf-8"))
                            widths[j] = max(widths[j], lengths.max(initial=1))
                    meta = f.create_dataset(f"{p}_metadata", (n, len(cols)), dtype=f"S{max(1, int(widths.max()))}")
                    meta.attrs["columns"] = [c.encode() for c in cols]
                valid = np.ones(n, dtype=bool)
                rows = np.empty(n, dtype=np.int64)
                for part in parts:
                    t = self.read_part(part)
                    if t.num_rows == 0:
                        continue
                    pos = t.column("position").to_numpy()
                    a, b = int(pos[0]), int(pos[-1]) + 1
                    vecs = vectors_of(t)
                    ok = np.asarray(t.column("status").to_pylist()) == "ok"
                    vecs = np.where(ok[:, None], vecs, 0.0).astype(np.float32)
                    dset[a:b] = vecs
                    faults.point("assemble.write")
                    valid[a:b] = ok
                    rows[a:b] = t.column("row").to_numpy()
                    if cols:
                        table = np.stack([_text(t.column(f"meta:{c}"), days[c]) for c in cols], axis=1)
                        meta[a:b] = np.char.encode(table, "utf-8")
                if not np.array_equal(rows, np.arange(n)):
                    f.create_dataset(f"{p}_rows", data=rows)
                if not valid.all():
                    f.create_dataset(f"{p}_valid", data=valid)
