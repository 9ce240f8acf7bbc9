"""A real local S3-compatible server for the tests: moto's server mode on 127.0.0.1.

Use it from a test module with ``from s3server import s3, s3_server  # noqa: F401``
(``tests/`` has no ``__init__.py``, so pytest puts ``tests/`` on ``sys.path``).

* ``s3_server`` (session): starts ``moto.server.ThreadedMotoServer`` once on a free port.
* ``s3`` (function): points this process at that server through environment variables
  (restored after the test), clears s3fs's cached filesystem instances, creates a fresh bucket
  and yields an :class:`S3` with the bucket name, the endpoint, a boto3 client, an s3fs
  filesystem and ``env``: the exact variables a subprocess needs to reach the server.

s3fs (through botocore) honours ``AWS_ENDPOINT_URL``; fsspec also reads
``FSSPEC_S3_ENDPOINT_URL`` into ``fsspec.config.conf["s3"]["endpoint_url"]`` when it is imported.
Both are set for subprocesses; in this process the fsspec config is set as well, so either
route alone would reach the server.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

import pytest

try:
    import boto3
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer
except ImportError as e:  # pragma: no cover - the test extra is not installed
    pytest.skip(f"S3 tests need moto[server], boto3 and s3fs ({e})", allow_module_level=True)

ACCESS_KEY = "nenya-test-key"
SECRET_KEY = "nenya-test-secret"
REGION = "us-east-1"


@dataclass
class S3:
    """What a test needs to use the local S3 server."""

    bucket: str
    endpoint: str
    client: object  # boto3 S3 client
    fs: s3fs.S3FileSystem
    env: dict[str, str] = field(default_factory=dict)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under ``prefix`` (straight from the server, no cache)."""
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) without any AWS_*/FSSPEC_* variable, plus :attr:`env`."""
        base = dict(os.environ if base is None else base)
        clean = {k: v for k, v in base.items() if not k.startswith(("AWS_", "FSSPEC_"))}
        return {**clean, **self.env}


def server_env(endpoint: str) -> dict[str, str]:
    """The environment variables that point AWS SDKs, s3fs and fsspec at ``endpoint``."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,  # botocore (so boto3 and s3fs) reads it
        "FSSPEC_S3_ENDPOINT_URL": endpoint,  # fsspec's own config, read when fsspec is imported
    }


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (a free port), for the whole session. Yields its endpoint."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the session's server, with this process pointed at it (restored afterwards)."""
    env = server_env(s3_server)
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_REGION",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # no shared config/credentials files can redirect or re-credential the clients
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    no_proxy = ",".join(p for p in (os.environ.get("NO_PROXY"), "127.0.0.1", "localhost") if p)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("no_proxy", no_proxy)
    # fsspec read FSSPEC_* when it was imported, long before this fixture: set its config directly too
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_server})
    s3fs.S3FileSystem.clear_instance_cache()

    client = boto3.client(
        "s3", endpoint_url=s3_server, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    )
    bucket = f"nenya-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True)
    try:
        yield S3(bucket=bucket, endpoint=s3_server, client=client, fs=fs, env=env)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        try:  # empty and drop the bucket so the server's memory stays small
            for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
            client.delete_bucket(Bucket=bucket)
        except Exception:  # pragma: no cover - cleanup only
            pass
