"""
### Dataset validation

Validates a dataset archive uploaded through the API (`POST /v1/datasets/upload-complete`
triggers it with run id `validate-{dataset_id}`).

1. **extract**: downloads `s3://$QLORA_S3_BUCKET/{s3_key}`, extracts it safely (zip slip,
   absolute paths, symlinks, zip bombs by ratio and total size, too many files are refused) and
   uploads the dataset folder (the one holding `metadata.csv`/`.jsonl` or the class
   sub-folders) under `datasets/{dataset_id}/files/`.
2. **validate**: checks the annotation table with Great Expectations and decodes every clip
   with PyAV, then writes the report to `datasets/{dataset_id}/validation/report.json` (and
   to MLflow, experiment `dataset-validation`, when `MLFLOW_TRACKING_URI` is set).

Invalid data (or an unsafe/corrupt archive) still writes a report with `valid: false` and the
first problems (file and row), then fails the run without retrying. Only transient S3 errors
are retried.

Conf: `{"dataset_id": "<uuid>", "s3_key": "datasets/<dataset_id>/<file name>"}`.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from training import s3, storage

log = logging.getLogger(__name__)

DAG_ID = "dataset_validation"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
S3_KEY_PATTERN = r"^datasets/[0-9a-fA-F-]{32,36}/[^/\\]+$"
MLFLOW_EXPERIMENT = "dataset-validation"


# --- helpers (heavy libraries are imported inside, never at parse time) ---------------------

def _cache_folder(dataset_id: str) -> Path:
    return s3.cache_dir() / "dataset-validation" / dataset_id


def _conf() -> tuple[str, str]:
    params = get_current_context()["params"]
    return str(params["dataset_id"]), str(params["s3_key"])


def _publish_report(report: dict, s3_key: str) -> None:
    """Writes the report to S3 (always) and to MLflow (when configured; never fatal)."""
    dataset_id = report["dataset_id"]
    s3.client().put_object(Bucket=s3.bucket(), Key=storage.dataset_report_key(dataset_id),
                           Body=json.dumps(report, indent=2).encode(), ContentType="application/json")
    log.info("validation report written to %s: valid=%s, %d error(s)",
             storage.s3_uri(s3.bucket(), storage.dataset_report_key(dataset_id)), report["valid"],
             report.get("error_count", len(report["errors"])))
    if os.environ.get("MLFLOW_TRACKING_URI"):
        try:
            _log_to_mlflow(report, s3_key)
        except Exception as exc:  # MLflow is a mirror of the report: never fail the run on it
            log.warning("could not log the validation report to MLflow: %s", exc)


def _log_to_mlflow(report: dict, s3_key: str) -> None:
    import mlflow

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
            metrics[f"label_count_{_metric_name(label)}"] = float(count)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report, "validation/report.json")


def _metric_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in str(text))[:100]


def _fail(report: dict, s3_key: str) -> None:
    _publish_report(report, s3_key)
    raise AirflowFailException("dataset is invalid: " + "; ".join(report["errors"][:5]))


def _guarded(step):
    """Runs a task body: transient errors propagate (Airflow retries them); any other failure
    still leaves a report (valid: false) and fails the run without retries."""
    import functools

    @functools.wraps(step)
    def run(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except AirflowFailException:
            raise
        except Exception as exc:
            if s3.is_transient(exc):
                log.warning("transient error, the task will be retried: %s", exc)
                raise
            from training.data.validation import empty_report

            log.exception("%s failed", step.__name__)
            dataset_id, s3_key = _conf()
            message = f"{step.__name__} failed: {type(exc).__name__}: {exc}"
            try:
                _publish_report(empty_report(dataset_id, [message]), s3_key)
            except Exception as publish_error:
                log.error("could not write the failure report: %s", publish_error)
            raise AirflowFailException(message) from exc
    return run


def _upload_folder(client, root: Path, files: list[Path], prefix: str) -> None:
    """Replaces what is under `prefix` with `files` (paths under `root`)."""
    s3.delete_prefix(client, s3.bucket(), prefix)
    s3.upload_files(client, s3.bucket(), root, files, prefix)


# --- the DAG ------------------------------------------------------------------------------

@dag(
    dag_id=DAG_ID,
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["datasets", "validation"],
    max_active_runs=8,
    dagrun_timeout=timedelta(hours=2),
    default_args={"retries": 3, "retry_delay": timedelta(seconds=5),
                  "retry_exponential_backoff": True, "max_retry_delay": timedelta(minutes=2)},
    params={
        "dataset_id": Param(type="string", pattern=UUID_PATTERN,
                            description="The dataset's id (a UUID) in the service database."),
        "s3_key": Param(type="string", pattern=S3_KEY_PATTERN, minLength=12, maxLength=1024,
                        description="Key of the uploaded archive: datasets/{dataset_id}/{file}."),
    },
)
def dataset_validation():
    @task
    @_guarded
    def extract() -> dict:
        """Download, extract safely, upload the dataset folder under files/."""
        from botocore.exceptions import ClientError

        from training.data.archive import ArchiveError, clear_folder, extract_archive
        from training.data.dataset_format import find_root
        from training.data.validation import dataset_files, empty_report

        dataset_id, s3_key = _conf()
        if not s3_key.startswith(storage.dataset_prefix(dataset_id)):
            _fail(empty_report(dataset_id, [
                f"s3_key '{s3_key}' is not under {storage.dataset_prefix(dataset_id)}"]), s3_key)

        work = _cache_folder(dataset_id)
        clear_folder(work)
        archive = work / "archive" / Path(s3_key).name
        archive.parent.mkdir(parents=True, exist_ok=True)
        client = s3.client()
        try:
            client.download_file(s3.bucket(), s3_key, str(archive))
        except ClientError as exc:
            if s3.is_missing(exc):
                _fail(empty_report(dataset_id, [f"{Path(s3_key).name}: no uploaded archive at "
                                                f"s3://{s3.bucket()}/{s3_key}"]), s3_key)
            raise  # _guarded: retried when transient, else reported
        log.info("downloaded %s (%d bytes)", s3_key, archive.stat().st_size)

        try:
            extract_archive(archive, work / "extracted")
        except ArchiveError as exc:
            clear_folder(work)
            message = str(exc)
            if not message.startswith(archive.name):
                message = f"{archive.name}: {message}"
            _fail(empty_report(dataset_id, [message]), s3_key)
        archive.unlink()
        root = find_root(work / "extracted")
        files = dataset_files(root)
        _upload_folder(client, root, files, storage.dataset_files_prefix(dataset_id))
        log.info("uploaded %d files under %s", len(files), storage.dataset_files_prefix(dataset_id))
        return {"dataset_id": dataset_id, "s3_key": s3_key, "folder": str(work / "extracted"),
                "file_count": len(files)}

    @task
    @_guarded
    def validate(extracted: dict) -> dict:
        """Great Expectations on the table, PyAV on every clip; the report goes to S3/MLflow."""
        from training.data.archive import clear_folder
        from training.data.validation import empty_report, validate_dataset

        dataset_id, s3_key = extracted["dataset_id"], extracted["s3_key"]
        folder = Path(extracted["folder"])
        if not folder.is_dir():  # another worker extracted it: use the uploaded copy
            folder = _cache_folder(dataset_id) / "downloaded"
            clear_folder(folder)
            s3.download_prefix(s3.client(), s3.bucket(), storage.dataset_files_prefix(dataset_id), folder)
        try:
            report = validate_dataset(folder, dataset_id)
        except Exception as exc:  # a bug or an unreadable file: still leave a report behind
            log.exception("validation crashed")
            report = empty_report(dataset_id, [f"validation failed: {type(exc).__name__}: {exc}"])
        finally:
            clear_folder(_cache_folder(dataset_id))
        if not report["valid"]:
            _fail(report, s3_key)
        _publish_report(report, s3_key)
        return {k: report[k] for k in ("valid", "file_count", "total_size_bytes", "clip_count")}

    validate(extract())


dataset_validation()
