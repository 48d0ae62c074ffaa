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

Conf: `{"dataset_id": "<uuid>", "s3_key": "datasets/<dataset_id>/<file name>", "size_bytes": N,
"etag": "..."}`: the size and ETag `upload-complete` recorded; the run downloads exactly that
object (`If-Match`) and ends the dataset in error ("changed after upload-complete") otherwise. The work of
each task is in `training/pipeline/dataset_intake.py`; this file holds the graph.
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from training import s3
from training.pipeline import dataset_intake
from training.pipeline.dataset_intake import DAG_ID

log = logging.getLogger(__name__)

UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
S3_KEY_PATTERN = r"^datasets/[0-9a-fA-F-]{32,36}/[^/\\]+$"


def _conf() -> tuple[str, str]:
    params = get_current_context()["params"]
    return str(params["dataset_id"]), str(params["s3_key"])


def _recorded() -> tuple[int | None, str | None]:
    """The size and ETag `upload-complete` recorded (None for runs triggered without them)."""
    params = get_current_context()["params"]
    size, etag = params.get("size_bytes"), params.get("etag")
    return (int(size) if size is not None else None), (str(etag) if etag else None)


def _reported(step):
    """Runs a task body so that every failure but a transient one (Airflow retries those)
    leaves a report (`valid: false`) and fails the run without retry."""

    @functools.wraps(step)
    def run(*args, **kwargs):
        dataset_id, s3_key = _conf()
        try:
            return step(*args, **kwargs)
        except dataset_intake.DatasetRejected as exc:
            dataset_intake.publish_report(exc.report, s3_key)
            raise AirflowFailException(str(exc)) from exc
        except Exception as exc:
            if s3.is_transient(exc):
                log.warning("transient error, the task will be retried: %s", exc)
                raise
            log.exception("%s failed", step.__name__)
            message = f"{step.__name__} failed: {type(exc).__name__}: {exc}"
            try:  # a dataset that ends in error keeps no extracted files (an upload may have stopped midway)
                dataset_intake.discard_files(dataset_id)
            except Exception as discard_error:
                log.error("could not delete the extracted files: %s", discard_error)
            try:
                dataset_intake.publish_report(dataset_intake.failure_report(dataset_id, message), s3_key)
            except Exception as publish_error:
                log.error("could not write the failure report: %s", publish_error)
            raise AirflowFailException(message) from exc
    return run


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
        "size_bytes": Param(None, type=["null", "integer"], minimum=1,
                            description="The archive's size recorded by upload-complete: any other ends the "
                            "dataset in error (changed after upload-complete)."),
        "etag": Param(None, type=["null", "string"], maxLength=128,
                      description="The archive's ETag recorded by upload-complete: only that object is "
                      "downloaded (If-Match)."),
    },
)
def dataset_validation():
    @task
    @_reported
    def extract() -> dict:
        """Download, extract safely, upload the dataset folder under files/."""
        return dataset_intake.extract(*_conf(), *_recorded())

    @task
    @_reported
    def validate(extracted: dict) -> dict:
        """Great Expectations on the table, PyAV on every clip; the report goes to S3/MLflow."""
        report = dataset_intake.validate(extracted)
        dataset_intake.publish_report(report, extracted["s3_key"])
        return {k: report[k] for k in ("valid", "file_count", "total_size_bytes", "clip_count")}

    validate(extract())


dataset_validation()
