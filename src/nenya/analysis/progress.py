"""Progress bars of the analysis jobs: searches counted in items, chunk by chunk, and bars over named stages."""

from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["Stages", "query_chunks", "chunk_bar"]

#: Query chunks hold at least this many rows (batched FAISS searches stay efficient) ...
SMALLEST_CHUNK = 512
#: ... and a search is cut into about this many, so that its bar moves.
CHUNKS = 50


def query_chunks(n: int, largest: int) -> list[tuple[int, int]]:
    """``(start, end)`` rows of the query chunks of ``n`` items: about 50 of them, each between 512 and
    ``largest`` rows (fewer when ``n`` is small).

    Example:
        >>> query_chunks(1500, 8192)
        [(0, 512), (512, 1024), (1024, 1500)]
    """
    size = max(1, min(largest, max(SMALLEST_CHUNK, -(-n // CHUNKS))))
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def chunk_bar(chunks: list[tuple[int, int]], desc: str, progress: bool) -> tqdm:
    """A bar counting the items of ``chunks`` as they are searched (update it by each chunk's length);
    none (disabled) for a search done in one chunk, whose bar could only jump from 0 to the end."""
    n = chunks[-1][1] if chunks else 0
    return tqdm(total=n, desc=desc, unit="item", disable=not progress or len(chunks) < 2, dynamic_ncols=True)


class Stages:
    """A bar over the named stages of a job, whose description says the stage that runs.

    Example:
        >>> with Stages("report", ["UMAP projection", "explorer page"], progress=True) as stages:
        ...     stages.start("UMAP projection")     # report: UMAP projection   0/2
        ...     stages.start("explorer page")       # report: explorer page     1/2
        >>>                                         # report: done              2/2
    """

    def __init__(self, desc: str, names: list[str], *, progress: bool) -> None:
        self.desc = desc
        self.names = list(names)
        self.bar = tqdm(
            total=len(self.names),
            desc=desc,
            disable=not progress,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} stages [{elapsed}]",
        )
        self._running = False

    def start(self, name: str) -> None:
        """End the stage that runs (if any) and say that ``name`` runs now."""
        if name not in self.names:
            raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(self.names)}")
        if self._running:
            self.bar.update(1)
        self._running = True
        self.bar.set_description_str(f"{self.desc}: {name}")

    def close(self) -> None:
        """End the last stage and leave the bar, full, saying the job is done."""
        if self._running:
            self.bar.update(1)
            self._running = False
        self.bar.set_description_str(f"{self.desc}: done")
        self.bar.close()

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:  # the bar stays where the job failed
            self.bar.close()
