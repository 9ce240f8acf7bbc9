"""The explorer in a notebook (``nenya.explore``), run headless with nbclient: it displays (the
jupyter_bokeh widget and BokehJS, inline) and the Python API selects and filters without a browser.
The kernel is this virtual environment's Python, through a kernel spec in a temporary folder (the
user's Jupyter folders are left alone)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

N = 20_000
KERNEL = "nenya-test-python"
IDS = [5, 17, 300, 4000, 12345]  # rows selected from Python


def table_file(folder: Path) -> Path:
    """20,000 synthetic points (``test_explorer``'s table) with their U0/U1, as Parquet."""
    from test_explorer import _table

    xy, _, table = _table(N, 300)
    path = folder / "points.parquet"
    table.assign(U0=xy[:, 0], U1=xy[:, 1]).to_parquet(path)
    return path


def kernel_env(folder: Path, monkeypatch: pytest.MonkeyPatch | None = None) -> dict[str, str]:
    """A kernel spec for this Python in ``folder`` and the Jupyter folders there (set with ``monkeypatch``)."""
    spec = folder / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "nenya test", "language": "python"}))
    env = {
        "JUPYTER_PATH": str(folder / "jupyter"),
        "JUPYTER_DATA_DIR": str(folder / "jupyter-data"),
        "JUPYTER_CONFIG_DIR": str(folder / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(folder / "jupyter-runtime"),
        "IPYTHONDIR": str(folder / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    if monkeypatch is not None:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    return env


def notebook(data: Path, out: Path) -> nbformat.NotebookNode:
    """The notebook: show the explorer; write the selection (a lasso's, in the browser); select ids;
    filter; clear. Each step writes what Python sees to ``out``/<step>.json."""
    w = f"import json\ndef write(name, obj):\n    open({str(out)!r} + '/' + name + '.json', 'w').write(json.dumps(obj))\n"
    cells = [
        w + f"import pandas as pd, nenya\nex = nenya.explore(pd.read_parquet({str(data)!r}), title='notebook test')\n"
        "seen = []\nex.on_select(lambda s: seen.append(len(s)))",
        "ex",
        "write('lasso', ex.selection['id'].tolist())",
        f"ids = ex.table['id'].iloc[{IDS}].tolist()\nn = ex.select(ids)\n"
        "write('select', {'n': n, 'ids': ids, 'selection': ex.selection['id'].tolist(), 'seen': seen})",
        "shown = ex.set_filter('label', ['a', 'b'])\n"
        "write('filter', {'shown': shown, 'selection': ex.selection['id'].tolist(), "
        "'labels': ex.table['label'].tolist()})",
        "ex.clear()\nwrite('clear', {'selection': len(ex.selection), 'seen': seen})",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "nenya test", "language": "python"}
    return nb


def check_select(out: Path) -> list[str]:
    """The ids selected from Python are ``.selection`` (returned for the page's check)."""
    r = json.loads((out / "select.json").read_text())
    assert r["n"] == len(IDS) and sorted(r["selection"]) == sorted(r["ids"])
    return r["ids"]


def check_filter(out: Path, ids: list[str]) -> np.ndarray:
    """A filter drops the ids it hides from ``.selection``; returns which points it shows."""
    r = json.loads((out / "filter.json").read_text())
    keep = np.isin(np.array(r["labels"]), ["a", "b"])
    assert r["shown"] == int(keep.sum())
    want = sorted(i for i, row in zip(ids, IDS) if keep[row])
    assert sorted(r["selection"]) == want and 0 < len(want) < len(ids)
    return keep


def test_notebook_runs_headless(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    kernel_env(tmp_path, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    nb = notebook(table_file(tmp_path), out)
    NotebookClient(nb, timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = nb.cells[1].outputs
    kinds = {k for o in shown for k in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" in kinds  # the jupyter_bokeh widget
    assert "application/vnd.bokehjs_load.v0+json" in kinds  # BokehJS, inline
    assert not any("cdn.bokeh.org" in json.dumps(o.get("data", {})) for o in shown)
    assert json.loads((out / "lasso.json").read_text()) == []
    ids = check_select(out)
    check_filter(out, ids)
    r = json.loads((out / "clear.json").read_text())
    assert r["selection"] == 0 and r["seen"][-1] == 0 and len(IDS) in r["seen"]


def test_explore_inputs_and_sample():
    import nenya

    rng = np.random.default_rng(0)
    import pandas as pd

    df = pd.DataFrame({"id": [f"p{i}" for i in range(300)], "U0": rng.normal(size=300), "U1": rng.normal(size=300)})
    df["group"] = np.where(df["U0"] > 0, "right", "left")
    with pytest.warns(UserWarning, match="random sample"):
        ex = nenya.explore(df, max_points=100)
    assert len(ex.table) == 100 and "100 of 300 points" in ex.note
    assert ex.select("projection", [[0, -9], [9, -9], [9, 9], [0, 9]]) == int((ex.table["U0"] > 0).sum())
    assert set(ex.selection["group"]) == {"right"}
    assert ex.set_filter("group", ["left"]) == int((ex.table["group"] == "left").sum())
    assert len(ex.selection) == 0
    with pytest.raises(ValueError, match="no filter"):
        ex.set_filter("nope", ["x"])
