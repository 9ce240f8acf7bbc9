"""Adding a source, an encoder kind and a sink is one definition plus its registration.

Each toy below is defined and registered here, in the test, and runs through ``nenya extract``
exactly as a user types it, with no other edit anywhere: the CLI's choices, the output naming and
the runner all come from the registries.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from nenya import cli
from nenya.encoders import encoders
from nenya.encoders.base import Encoder
from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.preprocess import Preprocess
from nenya.sinks import Sink, WriteContext, sinks
from nenya.sources import Source, SourceOptions, sources

N, DIM = 11, 3


def pixels(i: int) -> np.ndarray:
    return np.full((1, 4, 4), float(i), dtype=np.float32) + np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 16


class CountingSource(Source):
    """``count:N``: N cutouts of 4x4 pixels whose values depend on their index, with one metadata column."""

    def __init__(self, n: int) -> None:
        self.n = n

    @classmethod
    def from_spec(cls, where: str, options: SourceOptions) -> CountingSource:
        return cls(int(where))

    def plan(self, shard_size: int) -> Plan:
        shards = [
            Shard("count", "", i, a, min(self.n, a + shard_size)) for i, a in enumerate(range(0, self.n, shard_size))
        ]
        return Plan([Group("count", "count", "counted", {"": self.n}, {"": ["square"]}, f"n={self.n}")], shards)

    def read(self, shard: Shard, batch_size: int):
        for a in range(shard.start, shard.stop, batch_size):
            b = min(shard.stop, a + batch_size)
            pos = np.arange(a, b)
            yield Batch(
                shard,
                [f"item{i}" for i in pos],
                pos,
                pos.copy(),
                np.stack([pixels(i) for i in pos]),
                {"square": np.array([str(i * i) for i in pos], dtype=object)},
                last=b >= shard.stop,
            )


def linear_model(dim: int) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, dim))


def linear_encoder(rest: str, opt=None, *, options, trust_checkpoint: bool = False, remove_module: bool = True):
    """``linear:DIM``: the one factory signature every encoder kind shares."""
    dim = int(rest)
    return Encoder(
        linear_model(dim),
        name=f"linear:{dim}",
        dim=dim,
        preprocess=Preprocess(in_channels=1, demean=False),
        fingerprint=f"linear-{dim}",
    )


class JsonSink(Sink):
    """``--format jsonl``: one JSON object per line, {"id", "square", "vector"}; ``.jsonl`` files."""

    ext = ".jsonl"
    collections = True

    def __init__(self, output, *, overwrite: bool = False, name: str | None = None, suffix: str = "") -> None:
        self.output, self.name, self.rows = str(output), name, []

    def start(self, plan: Plan, context: WriteContext) -> set[tuple[str, str]]:
        self.dim = context.dim
        return set()

    def write(self, batch: Batch, vectors: np.ndarray) -> None:
        for i, sq, v in zip(batch.ids, batch.metadata["square"], vectors):
            self.rows.append({"id": i, "square": str(sq), "vector": [float(x) for x in v]})

    def commit(self, shard: Shard) -> None:
        pass

    def finish(self) -> list[str]:
        path = os.path.join(self.output, self.name or "out.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        return [path]


@pytest.fixture
def toys():
    sources.register("count", CountingSource, help="N counted cutouts")
    encoders.register("linear", linear_encoder, help="a seeded linear map")
    sinks.register("jsonl", JsonSink, help="JSON lines")
    yield
    sources.unregister("count")
    encoders.unregister("linear")
    sinks.unregister("jsonl")


def test_toy_source_encoder_and_sink_run_through_nenya_extract(toys, tmp_path, capsys):
    out = tmp_path / "vectors.jsonl"
    rc = cli.main(
        [
            "extract",
            "--source",
            f"count:{N}",
            "--model",
            f"linear:{DIM}",
            "-o",
            str(out),
            "--batch-size",
            "4",
            "--shard-size",
            "4",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"item{i}" for i in range(N)]
    assert [r["square"] for r in rows] == [str(i * i) for i in range(N)]
    with torch.no_grad():  # the reference: the model applied to the pixels directly
        expected = linear_model(DIM)(torch.from_numpy(np.stack([pixels(i) for i in range(N)]))).numpy()
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), expected, rtol=1e-6, atol=1e-6)
    printed = capsys.readouterr()
    assert str(out) in printed.out and f"model linear:{DIM} ({DIM}-d)" in printed.err


def test_toys_are_listed_and_choosable_only_while_registered(toys, capsys):
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "linear:" in listing and "count:" in listing and "jsonl" in listing
    sinks.unregister("jsonl")
    with pytest.raises(SystemExit):  # --format choices come from the registry
        cli.main(["extract", "--source", "count:3", "--model", "linear:2", "--format", "jsonl", "-o", "x.jsonl"])
    assert "invalid choice: 'jsonl'" in capsys.readouterr().err


def test_unknown_kinds_list_the_registered_ones(toys, tmp_path, capsys):
    rc = cli.main(["extract", "--source", "count:3", "--model", "nosuch:2", "-o", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown encoder 'nosuch'" in err and "linear" in err and "timm" in err
    rc = cli.main(["extract", "--source", "nosuch:3", "--model", "linear:2", "-o", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown source 'nosuch:3'" in err and "count:..." in err


def test_registering_a_name_twice_is_refused(toys):
    with pytest.raises(ValueError, match="already registered"):
        sinks.register("jsonl", JsonSink)
