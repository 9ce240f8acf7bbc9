"""Nenya's I/O helpers: named model options, where their weights live, remote files.

Named models (``v4``, ``v5``, ``viirs_v1``) ship their opts with the package. Their weights are
not public, so nenya looks for them in a folder you choose, laid out as Nenya's bucket was::

    <model dir>/<model_root>/<model_name>/last.pth

The model dir is, in order: the ``NENYA_MODEL_DIR`` environment variable, ``model_dir`` in the
JSON config file ``$NENYA_CONFIG`` (default ``~/.config/nenya/config.json``), or
``~/.cache/nenya/models``. It may be a URL (e.g. ``s3://modis-l2/SSL/models``).
"""

from __future__ import annotations

import os

from nenya.config import config_file, config_value, model_dir
from nenya.encoders.named import NAMED_MODELS, load_opt, named_opts_file, named_weights_path, resolve_weights
from nenya.pipeline import storage


def download_file_from_s3(local_file: str, s3_uri: str, clobber_local: bool = True) -> None:
    """Copy a remote file to ``local_file`` (kept for Nenya compatibility; any fsspec URL works)."""
    if os.path.exists(local_file) and not clobber_local:
        return
    fs, p = storage.url_to_fs(s3_uri)
    with storage.atomic_local(local_file) as tmp:
        storage.retry(lambda: fs.get_file(p, tmp), what=f"download of {s3_uri}")


def upload_file_to_s3(local_file: str, s3_uri: str) -> None:
    """Copy a local file to a URL (kept for Nenya compatibility); the local file is kept."""
    fs, p = storage.url_to_fs(s3_uri)
    storage.retry(lambda: fs.put_file(local_file, p), what=f"upload to {s3_uri}")


def list_of_bucket_files(path: str) -> list[str]:
    """Base names of the files under a local folder or URL."""
    return storage.listdir_names(path)


__all__ = [
    "NAMED_MODELS",
    "config_file",
    "config_value",
    "download_file_from_s3",
    "list_of_bucket_files",
    "load_opt",
    "model_dir",
    "named_opts_file",
    "named_weights_path",
    "resolve_weights",
    "upload_file_to_s3",
]
