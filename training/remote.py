"""Models and datasets from a local folder or an `s3://` URI (boto3's standard credential and
endpoint chain, e.g. `AWS_ENDPOINT_URL_S3`), cached under `QLORA_CACHE_DIR` (see `training.s3.cache_dir`);
and the upload of an output folder to an `s3://` URI."""

from __future__ import annotations

from pathlib import Path

from training import s3
from training.errors import InputError
from training.storage import split_s3_uri


def resolve(location: str, what: str) -> Path:
    """A local folder holding `location` (downloaded when it is an s3:// URI)."""
    if not location.startswith("s3://"):
        path = Path(location)
        if not path.is_dir():
            raise InputError(f"{location} is not a folder", field=what)
        return path
    bucket, prefix = split_s3_uri(location)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    target = s3.cache_dir() / "s3" / bucket / prefix
    try:
        found, _ = s3.download_prefix(s3.client(), bucket, prefix, target)
    except Exception as exc:  # botocore raises several types; one clear line for the user
        raise InputError(f"{location}: cannot read from S3 ({exc})", field=what) from None
    if not found:
        raise InputError(f"{location}: no objects under that prefix", field=what)
    return target


def upload_folder(folder: Path, uri: str) -> int:
    """Uploads every file of `folder` under the `s3://` prefix `uri` (`adapter_config.json`
    last, so a cut-short upload never looks like a complete adapter); returns the file count."""
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return len(s3.upload_files(s3.client(), bucket, Path(folder), files, prefix, last="adapter_config.json"))
