"""Nenya's I/O helpers: named model options, where their weights live, remote files.

Named models (``v4``, ``v5``, ``viirs_v1``) ship their opts with the package. Their weights are
not public, so nenya looks for them in a folder you choose, laid out as Nenya's bucket was::

    <model dir>/<model_root>/<model_name>/last.pth

The model dir is, in order: the ``NENYA_MODEL_DIR`` environment variable, ``model_dir`` in the
JSON config file ``$NENYA_CONFIG`` (default ``~/.config/nenya/config.json``), or
``~/.cache/nenya/models``. It may be a URL (e.g. ``s3://modis-l2/SSL/models``).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from nenya._errors import WeightsNotFoundError
from nenya.params import Params, option_preprocess
from nenya.pipeline import storage

NAMED_MODELS = ("v4", "v5", "viirs_v1")


def config_file() -> Path:
    return Path(os.environ.get("NENYA_CONFIG") or Path.home() / ".config" / "nenya" / "config.json")


def config_value(key: str, env: str | None = None) -> str | None:
    """A setting: the environment variable ``env`` if set, else ``key`` in the JSON file
    ``$NENYA_CONFIG`` (default ``~/.config/nenya/config.json``), else None. ``~`` is expanded."""
    if env and os.environ.get(env):
        return os.path.expanduser(os.environ[env])
    cfg = config_file()
    if cfg.exists():
        try:
            value = json.loads(cfg.read_text()).get(key)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {cfg} is not valid JSON: {e}") from None
        if value:
            return os.path.expanduser(str(value))
    return None


def model_dir() -> str:
    """The folder (or URL) holding the weights of named models."""
    value = config_value("model_dir", "NENYA_MODEL_DIR")
    if value:
        return value
    return str(storage.cache_dir() / "models")


def named_opts_file(name: str) -> Path:
    if name not in NAMED_MODELS:
        raise ValueError(f"unknown Nenya model {name!r}; expected one of {', '.join(NAMED_MODELS)} or a path to an opts JSON")
    return Path(str(resources.files("nenya") / "data" / "opts" / f"{name}.json"))


def named_weights_path(opt: Params) -> str:
    return storage.join(model_dir(), opt.model_root, opt.model_name, "last.pth")


def load_opt(nenya_model: str | os.PathLike) -> tuple[Params, str]:
    """Options and model path for a named model or an opts JSON.

    Args:
        nenya_model: ``"v4"``, ``"v5"``, ``"viirs_v1"`` or a path to an opts JSON.

    Returns:
        ``(opt, model_path)``: the preprocessed options, and where the weights are expected
        (for a named model: under :func:`model_dir`; for a JSON: ``<s3_outdir>/<model_folder>/last.pth``).
        The path is not checked here; :func:`resolve_weights` does, with a helpful error.

    Example:
        >>> opt, path = load_opt("v5")
        >>> opt.model_name
        'SimCLR_resnet50_lr_0.05_decay_0.0001_bsz_256_temp_0.07_trial_5_cosine_warm'
    """
    name = str(nenya_model)
    if name in NAMED_MODELS:
        opt = option_preprocess(Params(named_opts_file(name)))
        return opt, named_weights_path(opt)
    opt = option_preprocess(Params(name))
    outdir = getattr(opt, "s3_outdir", None) or "."
    return opt, storage.join(outdir, opt.model_folder or "", "last.pth")


def resolve_weights(opt: Params, *, name: str | None = None) -> str:
    """The weights file of a named model, or a :class:`WeightsNotFoundError` saying where to put it."""
    path = named_weights_path(opt)
    if storage.exists(path):
        return path
    raise WeightsNotFoundError(
        f"the weights of Nenya model {name or opt.model_name!r} are not at {path}. Put its last.pth there "
        f"(the file Nenya kept at {storage.join(opt.s3_outdir or '', opt.model_folder or '', 'last.pth')}), "
        "or set NENYA_MODEL_DIR (or model_dir in ~/.config/nenya/config.json) to the folder that holds "
        f"{opt.model_root}/{opt.model_name}/last.pth"
    )


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
