"""What every browser session of one ``nenya serve`` shares: the collection, the query encoder, the
results of uploaded queries and the files offered for download (all in one temporary folder that
the server removes when it stops)."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nenya.analysis.images import anomaly_rgb, to_data_uri
from nenya.analysis.serve.collection import Collection, Placement
from nenya.analysis.serve.work import WorkPool

log = logging.getLogger(__name__)

__all__ = ["ServeOptions", "ServeState", "QueryResult", "Download", "give_back_memory"]

MAX_QUERIES = 64
MAX_DOWNLOADS = 64


@dataclass(frozen=True)
class ServeOptions:
    """How ``nenya serve`` behaves.

    Args:
        k: neighbours listed for a clicked point, an id or an uploaded query.
        points: at most this many points are drawn per view; beyond, a fixed-priority sample over a
            density image of all the points in the viewport.
        max_upload: the largest upload accepted (bytes).
        title: page title; colour: the column coloured at first; source: the table the page's
            ``nenya trends`` command reads (the latents or the coordinates table).
        workers: heavy tasks (uploaded queries, exports) run at once, off the event loop; thumbnail
            reads have twice as many threads of their own. Beyond a short waiting line the server
            answers "busy" (HTTP 503) at once.
    """

    k: int = 10
    points: int = 20_000
    max_upload: int = 16 * 1024 * 1024
    title: str = "nenya serve"
    colour: str | None = None
    workers: int = 2
    source: str | None = None  # the table the page's `nenya trends` command names


@dataclass
class QueryResult:
    """An encoded query and what it found."""

    token: str
    name: str
    rows: np.ndarray
    scores: np.ndarray
    placement: Placement
    image: str  # a data: URI of the query, "" when it cannot be pictured

    def summary(self, collection: Collection) -> dict:
        """The JSON the page and the API get."""
        p = self.placement
        return {
            "token": self.token,
            "name": self.name,
            "neighbours": [
                {"id": str(collection.ids[r]), "row": int(r), "score": float(s)} for r, s in zip(self.rows, self.scores)
            ],
            "placement": {
                "x": p.x if np.isfinite(p.x) else None,
                "y": p.y if np.isfinite(p.y) else None,
                "method": p.method,
            },
        }


@dataclass(frozen=True)
class Download:
    """A file the server wrote into its temporary folder, offered under a random token."""

    path: str
    filename: str
    content_type: str


@dataclass
class ServeState:
    """Shared by all sessions of one server.

    ``encoder`` builds the query encoder on first use (loading a model is slow; many sessions never
    upload); None means queries by upload are off (the page says why: ``no_query_reason``).
    """

    collection: Collection
    options: ServeOptions = field(default_factory=ServeOptions)
    encoder: Callable[[], object] | None = None
    no_query_reason: str = ""
    tmpdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="nenya-serve-"))
    queries: OrderedDict[str, QueryResult] = field(default_factory=OrderedDict)
    downloads: OrderedDict[str, Download] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # the tables of queries and downloads
        self._encoder_lock = threading.Lock()  # loading the model (slow; nothing else waits on it)
        self._encoder_obj: object | None = None
        w = self.options.workers
        self.work = WorkPool(w, backlog=4 * w, name="nenya-work")  # queries, exports
        self.reads = WorkPool(2 * w, backlog=256, name="nenya-read")  # thumbnails (a page asks for dozens)

    # -- downloads --------------------------------------------------------------------------------
    def new_file(self, suffix: str) -> str:
        """A fresh file name inside the server's temporary folder."""
        return os.path.join(self.tmpdir, secrets.token_hex(12) + suffix)

    def offer(self, path: str, filename: str, content_type: str) -> str:
        """Offer a file of the temporary folder for download; returns its URL (relative to the page)."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            self.downloads[token] = Download(path, filename, content_type)
            while len(self.downloads) > MAX_DOWNLOADS:
                _, old = self.downloads.popitem(last=False)
                _remove(old.path)
        return f"nenya/download/{token}"

    def download(self, token: str) -> Download | None:
        with self._lock:
            return self.downloads.get(token)

    # -- queries ----------------------------------------------------------------------------------
    def query_encoder(self):
        """The query encoder (built once); a RuntimeError saying why when queries are off."""
        if self.encoder is None:
            raise RuntimeError(self.no_query_reason or "queries by image are off for this collection")
        with self._encoder_lock:
            if self._encoder_obj is None:
                try:
                    self._encoder_obj = self.encoder()
                except Exception as e:  # said to whoever uploads (HTTP 409), not a server error
                    raise RuntimeError(f"the model for queries by image could not be loaded: {e}") from e
            return self._encoder_obj

    def warm_up(self) -> None:
        """Load the query model now (the server calls this in a thread at start, so the first upload
        does not wait for it); a failure is logged here and told to whoever uploads."""
        if self.encoder is None:
            return
        try:
            self.query_encoder()
            log.info("query model loaded")
        except Exception as e:  # the server serves without queries; each upload gets this reason
            log.warning("the model for queries by image could not be loaded: %s", e)

    def run_query(self, data: bytes, name: str) -> QueryResult:
        """Encode an uploaded query, find its neighbours and place it; kept under a new token."""
        encoder = self.query_encoder()
        vector = encoder.encode_bytes(data, name)
        c = self.collection
        rows, scores = c.neighbours_of_vector(vector, self.options.k)
        result = QueryResult(secrets.token_urlsafe(12), name, rows, scores, c.place(vector, rows), _picture(data, name))
        with self._lock:
            self.queries[result.token] = result
            while len(self.queries) > MAX_QUERIES:
                self.queries.popitem(last=False)
        log.info("query %s: nearest %s", name, ", ".join(str(c.ids[r]) for r in rows[:3]))
        return result

    def query(self, token: str) -> QueryResult | None:
        with self._lock:
            return self.queries.get(token)

    def shutdown(self, grace: float = 5.0) -> bool:
        """Stop the workers (waiting work cancelled, running work given ``grace`` seconds in all) and
        remove the temporary folder; True when every worker finished in time."""
        t0 = time.monotonic()
        clean = self.work.close(timeout=grace)
        clean = self.reads.close(timeout=max(0.0, grace - (time.monotonic() - t0))) and clean
        self.close()
        return clean

    def close(self) -> None:
        """Remove the temporary folder (downloads and nothing else: the server writes nowhere else)."""
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _picture(data: bytes, name: str) -> str:
    """A small picture of an uploaded query for the page (a data: URI), or ""."""
    import io

    try:
        if name.lower().endswith(".npy"):
            a = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
            a = a.reshape(a.shape[-2:]) if a.ndim == 3 else a
            return to_data_uri(anomaly_rgb(a)) if a.ndim == 2 else ""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.thumbnail((128, 128))
            return to_data_uri(np.asarray(im.convert("RGB")))
    except Exception:  # the picture is a courtesy: the query itself was decoded by the hardened reader
        return ""


def give_back_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise: a server left running for
    days would hold the high-water mark of its busiest hour)."""
    import ctypes
    import gc

    gc.collect()
    try:
        import pyarrow as pa  # exports write through Arrow, whose allocator keeps freed blocks

        pa.default_memory_pool().release_unused()
    except (ImportError, AttributeError):
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
