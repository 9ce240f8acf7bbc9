"""Local and remote (fsspec) file access: atomic writes, fetches to a cache, uploads.

``fsspec.core.url_to_fs`` is the whole remote-I/O abstraction: any URL fsspec knows
(``s3://``, ``gs://``, ``memory://``, ...) works wherever nenya takes a path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec

from nenya._errors import OutputError

log = logging.getLogger(__name__)

#: Longest output name we create (most filesystems allow 255 bytes).
MAX_NAME_BYTES = 240


#: Where remote inputs are fetched and remote-output work folders live (override with NENYA_CACHE).
def cache_dir() -> Path:
    return Path(os.environ.get("NENYA_CACHE") or Path.home() / ".cache" / "nenya")


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs with a protocol other than ``file://``."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    s = str(path)
    return s[len("file://") :] if s.startswith("file://") else s


def url_to_fs(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a URL, with no stale listings: object stores change under us
    (other jobs, users deleting outputs), and s3fs's listing cache never expires on its own."""
    fs, path = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache(path)
    return fs, path


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or URL, with ``/`` for URLs."""
    s = str(base)
    if is_remote(s):
        return "/".join([s.rstrip("/")] + [p.strip("/") for p in parts if p])
    return os.path.join(s, *parts)


def absolute(path: str | os.PathLike) -> str:
    """A URL as it is; a local path made absolute (a record that must work from any folder)."""
    return str(path) if is_remote(path) else os.path.abspath(local_path(path))


def basename(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def safe_name(name: str, *, what: str = "output name") -> str:
    """``name`` if it is one plain file name, else an OutputError: nothing derived from inputs or
    ids (``../x``, absolute paths, NUL, very long names) may place a file outside the output folder."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
        or any(ord(c) < 32 for c in name)
    )
    if bad:
        shown = repr(name if len(name) < 80 else name[:77] + "...")
        raise OutputError(
            f"refusing {what} {shown}: it must be a single file name (no '/', '..', control "
            f"characters, at most {MAX_NAME_BYTES} bytes) so that it stays inside the output folder"
        )
    return name


_SECRET_ENV_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "ACCESS_KEY", "API_KEY", "PRIVATE")


def redact(text: str) -> str:
    """``text`` with credentials removed: ``user:password@`` in URLs and the values of environment
    variables that hold secrets (AWS_SECRET_ACCESS_KEY, *_TOKEN, ...). Used on everything nenya
    logs, prints or records in manifests."""
    import re

    text = re.sub(r"(\w[\w+.-]*://)[^/@\s:]+:[^@\s]+@", r"\1***@", str(text))
    for key, value in os.environ.items():
        if len(value) >= 6 and any(w in key.upper() for w in _SECRET_ENV_WORDS) and value in text:
            text = text.replace(value, "***")
    return text


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike, *, dest: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a full disk or an unwritable location while writing ``path`` into a clear OutputError."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            untouched = f"; {dest} was not touched" if dest else ""
            raise OutputError(
                f"no space left on the device while writing {path}{untouched}. Free some space (or "
                "choose another --output) and rerun the same command: committed shards are kept"
            ) from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise OutputError(f"cannot write {path}: {e.strerror}; choose a writable --output") from None
        raise


def exists(path: str | os.PathLike) -> bool:
    fs, p = url_to_fs(path)
    return fs.exists(p)


def listdir_names(folder: str | os.PathLike) -> list[str]:
    """Base names of the files in a folder (local or remote); [] when it does not exist."""
    fs, p = url_to_fs(folder)
    try:
        return sorted(basename(x) for x in fs.ls(p, detail=False))
    except (FileNotFoundError, NotADirectoryError):  # the sink says why it cannot write there
        return []


def expand(patterns: list[str]) -> list[str]:
    """Expand globs (local or remote) in order, keeping plain paths as given; no duplicates."""
    out: list[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            fs, p = url_to_fs(pat)
            matches = sorted(fs.glob(p))
            if not matches:
                raise FileNotFoundError(f"no file matches {pat!r}")
            proto = pat.split("://", 1)[0] + "://" if is_remote(pat) else ""
            out.extend(proto + m if proto and not m.startswith(proto) else m for m in matches)
        else:
            out.append(pat)
    return list(dict.fromkeys(out))  # unique, first-seen order


def fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fsync_path(path)


def tmp_name(path: str | os.PathLike) -> str:
    """A temporary sibling name for ``path`` that nenya recognises (and cleans up) as its own."""
    p = str(path)
    head, tail = os.path.split(p)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


def remove_stale_tmp(dest: str | os.PathLike) -> None:
    """Remove the temporaries of ``dest`` (``tmp_name``'s siblings) that a killed writer left next to it.
    Only for a writer that holds ``dest``'s lock: no other process is writing them. URLs: nothing to do
    (object stores never show a partial upload)."""
    if is_remote(str(dest)):
        return
    head, tail = os.path.split(local_path(str(dest)))
    prefix = f".{tail}.tmp-"
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(head or "."):
            if name.startswith(prefix) and len(name) == len(prefix) + 8:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(head, name))


def commit_local(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync ``tmp``, rename it over ``final`` and fsync the folder: all or nothing."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))


@contextlib.contextmanager
def atomic_local(final: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``final``; on success it becomes ``final`` atomically."""
    tmp = tmp_name(final)
    try:
        yield tmp
        commit_local(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def publish(local_file: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a finished local file to ``dest`` (local path or URL) so that it appears whole or not at all."""
    if is_remote(dest):
        fs, p = url_to_fs(dest)
        # One PUT (or a multipart upload completed at the end): object stores never show a partial object.
        retry(lambda: fs.put_file(str(local_file), p), what=f"upload to {dest}")
        os.remove(local_file)
    else:
        dest = local_path(dest)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        if os.path.dirname(os.path.abspath(local_file)) == os.path.dirname(os.path.abspath(dest)):
            commit_local(local_file, dest)
        else:
            tmp = tmp_name(dest)
            shutil.copyfile(local_file, tmp)
            commit_local(tmp, dest)
            os.remove(local_file)


def fetch(url: str, *, into: str | os.PathLike | None = None) -> str:
    """Return a local path for ``url``: itself when local, else a copy fetched into ``into``
    (default: the cache, keyed by the URL and the object's ETag/size/mtime, so a replaced remote
    file is fetched again). The copy is written atomically."""
    if not is_remote(url):
        return local_path(url)
    fs, p = url_to_fs(url)
    if into is None:
        info = retry(lambda: fs.info(p), what=f"stat of {url}")
        version = info.get("ETag") or info.get("etag") or info.get("md5") or ""
        version = f"{version}|{info.get('size')}|{info.get('LastModified') or info.get('mtime') or info.get('created')}"
        key = hashlib.sha256(f"{url}|{version}".encode()).hexdigest()[:16]
        folder = cache_dir() / "fetch" / key
    else:
        folder = Path(into)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / basename(url)
    if dest.exists():
        return str(dest)
    with atomic_local(dest) as tmp:
        retry(lambda: fs.get_file(p, tmp), what=f"download of {url}")
    log.info("fetched %s -> %s", url, dest)
    return str(dest)


def retry(fn, *, what: str, attempts: int = 5, base_delay: float = 0.5):
    """Call ``fn`` with exponential back-off on transient errors (connection drops, throttling)."""
    for i in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except (OSError, TimeoutError, ConnectionError) as e:
            if i == attempts - 1:
                raise
            delay = base_delay * 2**i
            log.warning("%s failed (%s); retrying in %.1f s", what, type(e).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def make_tempdir(prefix: str = "nenya-") -> str:
    return tempfile.mkdtemp(prefix=prefix)
