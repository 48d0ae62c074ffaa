"""S3 access for the pipeline side (DAG tasks, the engine, seeding): one client factory, one
notion of a transient error, and folder transfers that never leave torn files behind.

Configuration is boto3's standard chain (`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, ...) plus
`QLORA_S3_BUCKET`; the key layout is `training/storage.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                             "InternalError", "ServiceUnavailable"})
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def bucket() -> str:
    return os.environ.get("QLORA_S3_BUCKET", "qlora")


def cache_dir() -> Path:
    """Local cache of models and datasets (`QLORA_CACHE_DIR`; `make up` sets `.cache/`)."""
    return Path(os.environ.get("QLORA_CACHE_DIR") or Path.home() / ".cache" / "qlora")


def client():
    """A boto3 S3 client: path-style addressing when a custom endpoint (SeaweedFS, MinIO) is
    configured, bounded timeouts, standard retries."""
    import boto3
    from botocore.config import Config

    style = "path" if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") else "auto"
    return boto3.client("s3", config=Config(s3={"addressing_style": style}, connect_timeout=10, read_timeout=120,
                                            retries={"max_attempts": 4, "mode": "standard"}))


def is_transient(exc: BaseException) -> bool:
    """Network trouble, throttling and 5xx answers are worth a retry; anything else is not."""
    from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                     EndpointConnectionError, ReadTimeoutError)

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") in TRANSIENT_CODES
    return isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError,
                            ConnectionError, TimeoutError))


def is_missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) in MISSING_CODES


def list_objects(s3, bucket_name: str, prefix: str) -> list[dict]:
    objects: list[dict] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket_name, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    return objects


def download_prefix(s3, bucket_name: str, prefix: str, dest: Path) -> tuple[int, int]:
    """Mirrors `s3://bucket/prefix` into `dest`. A local file is kept when its size and its
    modification time equal the object's (the time is set from `LastModified` on download, as
    `aws s3 sync` compares them), so an object re-uploaded with the same size is fetched again.
    Each file is written under a temporary name and renamed, so readers never see half a file.
    Returns (objects found, files downloaded)."""
    found = downloaded = 0
    for obj in list_objects(s3, bucket_name, prefix):
        rel = obj["Key"][len(prefix):]
        if not rel or rel.endswith("/") or rel.startswith("/") or ".." in rel.split("/"):
            continue
        found += 1
        target = dest / rel
        modified = obj["LastModified"].timestamp()
        if target.is_file() and (stat := target.stat()).st_size == obj["Size"] and stat.st_mtime == modified:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        s3.download_file(bucket_name, obj["Key"], str(partial))
        os.utime(partial, (modified, modified))
        os.replace(partial, target)
        downloaded += 1
    return found, downloaded


def upload_files(s3, bucket_name: str, root: Path, files: Iterable[Path], prefix: str,
                 last: str | None = None) -> list[str]:
    """Uploads `files` (paths under `root`) under `prefix`. The file named `last` goes last: its
    presence marks a complete folder, so an upload cut short never looks complete."""
    keys = []
    for path in sorted(files, key=lambda p: (p.name == last, p.relative_to(root).as_posix())):
        key = prefix + path.relative_to(root).as_posix()
        s3.upload_file(str(path), bucket_name, key)
        keys.append(key)
    return keys


def delete_prefix(s3, bucket_name: str, prefix: str) -> int:
    """Deletes every object under `prefix`; returns how many."""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket_name, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket_name, Delete={"Objects": keys, "Quiet": True})
            count += len(keys)
    return count
