"""An uploaded dataset archive taken in (the `dataset_validation` DAG's work): safe extraction
into `datasets/{dataset_id}/files/`, validation (Great Expectations on the table, PyAV on every
clip) and the report, written to S3 and mirrored to MLflow.

Invalid data raises `DatasetRejected` carrying the report (`valid: false`) for the caller to
publish; heavy libraries are imported inside the functions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from training import s3
from training.pipeline.errors import JobFailed
from training.settings import get_settings

log = logging.getLogger(__name__)

DAG_ID = "dataset_validation"
MLFLOW_EXPERIMENT = "dataset-validation"


class DatasetRejected(JobFailed):
    """The archive or its data is invalid; `report` (valid: false) says why, file and row."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("dataset is invalid: " + "; ".join(report["errors"][:5]))
        self.report = report


def failure_report(dataset_id: str, message: str) -> dict[str, Any]:
    """The report of a validation that could not run to its end (valid: false)."""
    from training.data.validation import empty_report

    return empty_report(dataset_id, [message])


def rejected(dataset_id: str, message: str) -> DatasetRejected:
    return DatasetRejected(failure_report(dataset_id, message))


def work_folder(dataset_id: str) -> Path:
    """The dataset's scratch folder on this worker (deleted once validated)."""
    return get_settings().cache_dir / "dataset-validation" / dataset_id


#: the end of the detail when the object is not the one `upload-complete` recorded
CHANGED = "changed after upload-complete"


def download_exact(client, bucket: str, key: str, dest: Path, size_bytes: int | None, etag: str | None) -> None:
    """Downloads `key` to `dest`; with `etag` only that version of the object (`If-Match`: S3
    answers 412 for any other), and with `size_bytes` only that many bytes. An object that is
    not the one recorded raises `ObjectChanged`; a plain-MD5 ETag is also checked against the
    bytes received."""
    import hashlib

    from botocore.exceptions import ClientError

    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if etag:
        args["IfMatch"] = etag
    try:
        resp = client.get_object(**args)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("PreconditionFailed", "412"):
            raise ObjectChanged(f"its ETag is no longer {etag}") from exc
        raise
    if size_bytes is not None and int(resp["ContentLength"]) != size_bytes:
        raise ObjectChanged(f"it is {resp['ContentLength']} bytes, not {size_bytes}")
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    with dest.open("wb") as out:
        for chunk in resp["Body"].iter_chunks(1024 * 1024):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    if size_bytes is not None and received != size_bytes:
        raise ObjectChanged(f"{received} bytes arrived, not {size_bytes}")
    plain = (etag or "").strip('"')
    if len(plain) == 32 and "-" not in plain and digest.hexdigest() != plain.lower():
        raise ObjectChanged("its bytes do not match the recorded ETag")


class ObjectChanged(Exception):
    """The uploaded object is not the one `upload-complete` recorded."""


def extract(dataset_id: str, s3_key: str, size_bytes: int | None = None, etag: str | None = None) -> dict[str, Any]:
    """Downloads the archive at `s3_key` (exactly the object `upload-complete` recorded:
    `size_bytes` and `etag`, when given), extracts it safely (zip slip, absolute paths,
    symlinks, zip bombs, too many files are refused) and uploads the dataset folder (the one
    holding the table or the class sub-folders) under `datasets/{dataset_id}/files/`, replacing
    what was there. Returns `{dataset_id, s3_key, folder, file_count}`."""
    from botocore.exceptions import ClientError

    from training.data.archive import ArchiveError, clear_folder, extract_archive
    from training.data.dataset_format import find_root
    from training.data.validation import dataset_files

    bucket = get_settings().s3_bucket
    if not s3_key.startswith(s3.dataset_prefix(dataset_id)):
        raise rejected(dataset_id, f"s3_key '{s3_key}' is not under {s3.dataset_prefix(dataset_id)}")
    work = work_folder(dataset_id)
    clear_folder(work)
    archive = work / "archive" / Path(s3_key).name
    archive.parent.mkdir(parents=True, exist_ok=True)
    client = s3.client()
    try:
        if size_bytes is None and etag is None:  # a run triggered without the recorded object
            client.download_file(bucket, s3_key, str(archive))
        else:
            download_exact(client, bucket, s3_key, archive, size_bytes, etag)
    except ClientError as exc:
        if s3.is_missing(exc):
            raise rejected(dataset_id, f"{archive.name}: no uploaded archive at {s3.s3_uri(bucket, s3_key)}") from exc
        raise
    except ObjectChanged as exc:
        clear_folder(work)
        raise rejected(dataset_id, f"{archive.name}: the archive {CHANGED} ({exc}); upload it again as a new "
                                   "dataset") from exc
    log.info("downloaded %s (%d bytes)", s3_key, archive.stat().st_size)

    try:
        extract_archive(archive, work / "extracted")
    except ArchiveError as exc:
        clear_folder(work)
        message = str(exc)
        raise rejected(dataset_id, message if message.startswith(archive.name) else f"{archive.name}: {message}") \
            from exc
    archive.unlink()
    root = find_root(work / "extracted")
    files = dataset_files(root)
    prefix = s3.dataset_files_prefix(dataset_id)
    s3.delete_prefix(client, bucket, prefix)
    s3.upload_files(client, bucket, root, files, prefix)
    log.info("uploaded %d files under %s", len(files), prefix)
    return {"dataset_id": dataset_id, "s3_key": s3_key, "folder": str(work / "extracted"), "file_count": len(files)}


def validate(extracted: dict[str, Any]) -> dict[str, Any]:
    """Validates the extracted folder (this worker's, else the uploaded copy): the report of a
    valid dataset, else `DatasetRejected` after deleting the extracted files from S3 (nothing
    half-stored). The scratch folder is deleted either way."""
    from training.data.archive import clear_folder
    from training.data.validation import validate_dataset

    dataset_id = extracted["dataset_id"]
    folder = Path(extracted["folder"])
    if not folder.is_dir():  # another worker extracted it: use the uploaded copy
        folder = work_folder(dataset_id) / "downloaded"
        clear_folder(folder)
        s3.download_prefix(s3.client(), get_settings().s3_bucket, s3.dataset_files_prefix(dataset_id), folder)
    try:
        report = validate_dataset(folder, dataset_id)
    except Exception as exc:  # a bug or an unreadable file: still leave a report behind
        log.exception("validation crashed")
        report = failure_report(dataset_id, f"validation failed: {type(exc).__name__}: {exc}")
    finally:
        clear_folder(work_folder(dataset_id))
    if not report["valid"]:
        # nothing of a rejected dataset stays published: only its report (and the archive)
        removed = s3.delete_prefix(s3.client(), get_settings().s3_bucket, s3.dataset_files_prefix(dataset_id))
        log.info("dataset rejected: removed its %d extracted files from S3", removed)
        raise DatasetRejected(report)
    return report


def discard_files(dataset_id: str) -> int:
    """Deletes the dataset's extracted files from S3 (a dataset that ends in error keeps none)."""
    return s3.delete_prefix(s3.client(), get_settings().s3_bucket, s3.dataset_files_prefix(dataset_id))


def publish_report(report: dict[str, Any], s3_key: str) -> None:
    """Writes the report to `datasets/{id}/validation/report.json` (always) and to MLflow
    (when `MLFLOW_TRACKING_URI` is set; never fatal: MLflow only mirrors it)."""
    settings = get_settings()
    key = s3.dataset_report_key(report["dataset_id"])
    s3.client().put_object(Bucket=settings.s3_bucket, Key=key, Body=json.dumps(report, indent=2).encode(),
                           ContentType="application/json")
    log.info("validation report written to %s: valid=%s, %d error(s)", s3.s3_uri(settings.s3_bucket, key),
             report["valid"], report.get("error_count", len(report["errors"])))
    if settings.mlflow_tracking_uri:
        try:
            _log_to_mlflow(report, s3_key, settings.mlflow_tracking_uri)
        except Exception as exc:
            log.warning("could not log the validation report to MLflow: %s", exc)


def _log_to_mlflow(report: dict[str, Any], s3_key: str, tracking_uri: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(MLFLOW_EXPERIMENT)
    with mlflow.start_run(run_name=report["dataset_id"]):
        mlflow.set_tags({"dataset_id": report["dataset_id"], "valid": str(report["valid"]).lower(),
                         "airflow_dag_id": DAG_ID})
        mlflow.log_params({"dataset_id": report["dataset_id"], "s3_key": s3_key,
                           "source": report.get("source", "none"),
                           "tasks": ",".join(report.get("tasks") or []) or "none"})
        metrics = {"valid": float(bool(report["valid"])),
                   "error_count": float(report.get("error_count", len(report["errors"])))}
        for key in ("file_count", "total_size_bytes", "clip_count"):
            metrics[key] = float(report.get(key) or 0)
        for name, values in (report.get("video") or {}).items():
            for stat, value in values.items():
                metrics[f"video_{name}_{stat}"] = float(value)
        for label, count in (report.get("labels") or {}).items():
            metrics[f"label_count_{metric_name(label)}"] = float(count)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report, "validation/report.json")


def metric_name(text: str) -> str:
    """`text` as an MLflow metric name (letters, digits, `_-.`; at most 100 characters)."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in str(text))[:100]
