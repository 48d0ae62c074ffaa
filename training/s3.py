"""S3 for the pipeline side (DAG tasks, the engine, seeding): the one module.

1. The key layout: where everything lives in the bucket (the API uses the same layout).
2. The client and its errors: one client factory, what counts as transient or missing.
3. Transfers: folder downloads and uploads that never leave torn files behind.
4. `s3://` URIs for the engine: a model, dataset or adapter as a local folder (through the
   cache), an output folder uploaded to a URI.

The bucket, the endpoint and the cache folder come from `training.settings`; credentials from
boto3's standard chain (`AWS_ACCESS_KEY_ID`, ..., or an IAM role).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from training.errors import InputError
from training.settings import get_settings

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# 1. The key layout
#
#     datasets/{dataset_id}/{file_name}             the uploaded archive (as the user named it)
#     datasets/{dataset_id}/files/...               the extracted, validated dataset folder
#     datasets/{dataset_id}/validation/report.json  the validation report (GX results, stats)
#     models/{model_id}/                            base model weights, config, tokenizer, processor
#     trainings/{job_id}/adapter/                   the trained LoRA adapter (+ processor files,
#                                                   metrics.json of the evaluation)
#     trainings/{job_id}/checkpoints/               resumable training checkpoints

DATASETS = "datasets"
MODELS = "models"
TRAININGS = "trainings"
#: the file whose presence marks a complete adapter: uploaded last
ADAPTER_MARKER = "adapter_config.json"


def dataset_prefix(dataset_id: str) -> str:
    return f"{DATASETS}/{dataset_id}/"


def dataset_upload_key(dataset_id: str, safe_file_name: str) -> str:
    return f"{dataset_prefix(dataset_id)}{safe_file_name}"


def dataset_files_prefix(dataset_id: str) -> str:
    return f"{dataset_prefix(dataset_id)}files/"


def dataset_report_key(dataset_id: str) -> str:
    return f"{dataset_prefix(dataset_id)}validation/report.json"


def dataset_report_beside(files_folder: str | Path) -> Path:
    """Where a local copy of a dataset's `files/` folder (the worker cache, `local_folder`) has
    the dataset's validation report, laid out as in the bucket (it may not be there)."""
    return Path(files_folder).parent / dataset_report_key("_")[len(dataset_prefix("_")):]


def model_prefix(model_id: str) -> str:
    return f"{MODELS}/{model_id}/"


def training_prefix(job_id: str) -> str:
    return f"{TRAININGS}/{job_id}/"


def adapter_prefix(job_id: str) -> str:
    return f"{training_prefix(job_id)}adapter/"


def checkpoints_prefix(job_id: str) -> str:
    return f"{training_prefix(job_id)}checkpoints/"


def training_stop_key(job_id: str) -> str:
    """The stop request of a job (written by the API's `POST /v1/trainings/{id}/stop`): the train
    task polls it and stops its engine itself, so a stop that comes after the training ended
    changes nothing (the job completes)."""
    return f"{training_prefix(job_id)}stop.json"


def training_result_key(job_id: str) -> str:
    """The engine's `result.json`, published by the train task as it changes (checkpoints,
    status; `exited: false`) and a last time once the engine process is gone (`exited: true`:
    what tells the API that the training process has exited)."""
    return f"{training_prefix(job_id)}result.json"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri}")
    return bucket, key


# --------------------------------------------------------------------------------------------
# 2. The client and its errors

TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                             "InternalError", "ServiceUnavailable"})
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def client():
    """A boto3 S3 client: path-style addressing when a custom endpoint (SeaweedFS, MinIO) is
    configured, bounded timeouts, standard retries."""
    import boto3
    from botocore.config import Config

    style = "path" if get_settings().s3_endpoint_url else "auto"
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


# --------------------------------------------------------------------------------------------
# 3. Transfers

#: files fetched at once by `download_prefix` (boto3 clients are thread-safe)
DOWNLOAD_THREADS = 8


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
    The files missing are fetched `DOWNLOAD_THREADS` at a time (many small clips: latency, not
    bandwidth, is the cost). Returns (objects found, files downloaded)."""
    found, wanted = 0, []
    for obj in list_objects(s3, bucket_name, prefix):
        rel = obj["Key"][len(prefix):]
        if not rel or rel.endswith("/") or rel.startswith("/") or ".." in rel.split("/"):
            continue
        found += 1
        target = dest / rel
        modified = obj["LastModified"].timestamp()
        if target.is_file() and (stat := target.stat()).st_size == obj["Size"] and stat.st_mtime == modified:
            continue
        wanted.append((obj["Key"], target, modified))

    def fetch(key: str, target: Path, modified: float) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        s3.download_file(bucket_name, key, str(partial))
        os.utime(partial, (modified, modified))
        os.replace(partial, target)

    if len(wanted) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(DOWNLOAD_THREADS, len(wanted)), thread_name_prefix="s3-download") as pool:
            for done in [pool.submit(fetch, *w) for w in wanted]:
                done.result()  # the first error propagates (the others finish or fail alike)
    elif wanted:
        fetch(*wanted[0])
    return found, len(wanted)


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


# --------------------------------------------------------------------------------------------
# 4. s3:// URIs for the engine

def _folder_prefix(key: str) -> str:
    return key.rstrip("/") + "/" if key else ""


def cached_copy(uri: str) -> Path:
    """Where `local_folder` keeps its copy of the `s3://` prefix `uri`: under the cache folder
    (`QLORA_CACHE_DIR`), `s3/{bucket}/{prefix}`."""
    bucket, key = split_s3_uri(uri)
    return get_settings().cache_dir / "s3" / bucket / _folder_prefix(key)


def local_folder(location: str, what: str) -> Path:
    """A local folder holding `location`: the folder itself, or for an `s3://` URI its copy in
    the cache (downloaded; files already there and unchanged are kept). `what` is the input's
    name, the `field` of the `InputError` raised when there is no such folder or prefix."""
    if not location.startswith("s3://"):
        path = Path(location)
        if not path.is_dir():
            raise InputError(f"{location} is not a folder", field=what)
        return path
    bucket, key = split_s3_uri(location)
    target = cached_copy(location)
    try:
        found, _ = download_prefix(client(), bucket, _folder_prefix(key), target)
    except Exception as exc:  # botocore raises several types; one clear line for the user
        raise InputError(f"{location}: cannot read from S3 ({exc})", field=what) from None
    if not found:
        raise InputError(f"{location}: no objects under that prefix", field=what)
    return target


def upload_folder_retrying(folder: Path, uri: str, within_s: float, pause_s: float = 5.0) -> int:
    """`upload_folder`, tried again every `pause_s` while S3 cannot be reached or answers 5xx,
    for at most `within_s`; then `S3UploadFailed` naming the destination, how long it was
    tried and the last error. Other refusals (403, no such bucket) fail at once."""
    import time

    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    started = time.monotonic()
    while True:
        try:
            return upload_folder(folder, uri)
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            refused = (status is not None and status < 500) or any(
                code in str(exc) for code in ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId",
                                              "SignatureDoesNotMatch"))
            waited = time.monotonic() - started
            if refused or waited + pause_s > within_s:
                raise S3UploadFailed(f"could not upload to {uri} (S3 at {get_settings().s3_endpoint_url or 'AWS'}, "
                                     f"tried for {waited:.0f} s): {type(exc).__name__}: {exc}") from exc
            log.warning("S3 did not take the upload to %s (%s: %s); trying again in %.0f s", uri,
                        type(exc).__name__, exc, pause_s)
            time.sleep(pause_s)


class S3UploadFailed(RuntimeError):
    """An upload S3 did not take within its retry window."""


def upload_folder(folder: Path, uri: str) -> int:
    """Uploads every file of `folder` under the `s3://` prefix `uri` (`adapter_config.json`
    last, so a cut-short upload never looks like a complete adapter); returns the file count."""
    bucket, key = split_s3_uri(uri)
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return len(upload_files(client(), bucket, Path(folder), files, _folder_prefix(key), last=ADAPTER_MARKER))
