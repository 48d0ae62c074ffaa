"""Models and datasets from a local folder or an `s3://` URI (boto3's standard credential and
endpoint chain, e.g. `AWS_ENDPOINT_URL_S3`), cached under `QLORA_CACHE_DIR` (default `.cache/`);
and the upload of an output folder to an `s3://` URI."""

from __future__ import annotations

import os
from pathlib import Path

from training.config import ArgumentError
from training.storage import split_s3_uri


def cache_dir() -> Path:
    return Path(os.environ.get("QLORA_CACHE_DIR") or ".cache")


def _client():
    import boto3

    return boto3.client("s3")


def resolve(location: str, what: str) -> Path:
    """A local folder holding `location` (downloaded when it is an s3:// URI)."""
    if not location.startswith("s3://"):
        path = Path(location)
        if not path.is_dir():
            raise ArgumentError(f"--{what} {location} is not a folder")
        return path
    bucket, prefix = split_s3_uri(location)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    target = cache_dir() / "s3" / bucket / prefix
    client = _client()
    found = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                    continue
                dest = target / rel
                found += 1
                if dest.is_file() and dest.stat().st_size == obj["Size"]:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(dest))
    except Exception as exc:  # botocore raises several types; one clear line for the user
        if isinstance(exc, ArgumentError):
            raise
        raise ArgumentError(f"--{what} {location}: cannot read from S3 ({exc})") from None
    if not found:
        raise ArgumentError(f"--{what} {location}: no objects under that prefix")
    return target


def upload_folder(folder: Path, uri: str) -> int:
    """Uploads every file of `folder` under the `s3://` prefix `uri`; returns the file count."""
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = _client()
    count = 0
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())
            count += 1
    return count
