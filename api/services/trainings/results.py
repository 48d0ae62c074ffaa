"""What a user takes away from a job: its adapter and its checkpoints, as pre-signed downloads,
and its final evaluation (read from its MLflow run).

Both are read from the engine's `result.json` the train task publishes to S3
(`training.s3.training_result_key`: while the engine runs, and a last time once it exited).
The SHA-256 of each file is the engine's: it hashes every file as it saves it (the adapter's
in `adapter_manifest`, each checkpoint's in its `files`), so the API never reads a weight file.
A file is offered only when S3 holds it with the recorded size (an upload cut short is not).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from api.clients.airflow import AirflowError
from api.models.training_job import TrainingJob, TrainingStatus
from api.clients.mlflow import MlflowUnavailable
from api.schemas.results import AdapterDownload, CheckpointOut, DownloadFile, EvaluationOut, EvaluationSide
from api.services.errors import Conflict, ServiceError
from api.services.trainings import sync
from api.services.trainings.context import TrainingContext
from api.models.base import utcnow
from training import s3 as s3_layout

log = logging.getLogger(__name__)

_ACTIVE = (TrainingStatus.QUEUED, TrainingStatus.RUNNING)


def _published(ctx: TrainingContext, job: TrainingJob) -> dict[str, Any]:
    if ctx.s3 is None:
        return {}
    result = ctx.s3.get_json(s3_layout.training_result_key(job.id))
    return result if isinstance(result, dict) else {}


def _current(ctx: TrainingContext, job: TrainingJob) -> None:
    """A queued/running (or not yet settled) job's status read from Airflow now, as the detail
    does (it may have ended, or finished stopping, since)."""
    if job.status in _ACTIVE or job.settled_at is None:
        try:
            sync.refresh_one(ctx, job)
        except AirflowError as exc:  # the status known so far decides
            log.warning("cannot read job %s from Airflow: %s", job.id, exc)
        ctx.session.commit()


def _files(ctx: TrainingContext, prefix: str, entries: Any, expires_in: int) -> list[DownloadFile] | None:
    """The download of each recorded file under `prefix`; None when one is missing in S3 or
    differs in size from what the engine recorded (an upload cut short)."""
    assert ctx.s3 is not None
    if not isinstance(entries, list) or not entries:
        return None
    stored = ctx.s3.list_prefix(prefix)
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not {"name", "size_bytes", "sha256"} <= entry.keys():
            return None
        key = prefix + str(entry["name"])
        if stored.get(key) != entry["size_bytes"]:
            return None
        out.append(DownloadFile(name=entry["name"], size_bytes=entry["size_bytes"], sha256=entry["sha256"],
                                download_url=ctx.s3.presign_get(key, expires_in, file_name=entry["name"])))
    return out


def adapter_download(ctx: TrainingContext, job: TrainingJob) -> AdapterDownload:
    """Pre-signed downloads of a completed job's adapter, or of the partial adapter a stopped
    job saved; `Conflict` (409) saying why while there is nothing to download."""
    _current(ctx, job)
    if job.status in _ACTIVE:
        raise Conflict(f"Job {job.id} is {job.status}: its adapter can be downloaded once the job completed "
                       "(or once stopped, when it saved a partial adapter)")
    if job.status == TrainingStatus.FAILED and not job.output_path:  # past its deadline: the partial adapter
        raise Conflict(f"Job {job.id} failed: it has no adapter to download ({job.error or 'see its logs'})")
    result = _published(ctx, job)
    expires_in = ctx.settings.presigned_url_expiry_s
    expires_at = utcnow() + timedelta(seconds=expires_in)
    files = _files(ctx, s3_layout.adapter_prefix(job.id), result.get("adapter_manifest"), expires_in) \
        if result.get("output_uri") else None
    if files is None:
        if job.status == TrainingStatus.STOPPED:
            raise Conflict(f"Job {job.id} was stopped before it saved a partial adapter: nothing to download")
        raise Conflict(f"Job {job.id} is {job.status} but its adapter is not (yet) fully in storage; retry in a "
                       "moment")
    return AdapterDownload(job_id=job.id, partial=job.status != TrainingStatus.COMPLETED, expires_at=expires_at,
                           files=files)


def list_checkpoints(ctx: TrainingContext, job: TrainingJob) -> list[CheckpointOut]:
    """The checkpoints the engine uploaded and still keeps (newest last), with pre-signed
    downloads; while the job runs, as of the last manifest the train task published."""
    saved = _published(ctx, job).get("checkpoints")
    expires_in = ctx.settings.presigned_url_expiry_s
    expires_at = utcnow() + timedelta(seconds=expires_in)
    out = []
    for checkpoint in saved if isinstance(saved, list) else []:
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("step"), int) or not checkpoint.get("uri"):
            continue  # kept on the worker only (its upload failed)
        try:
            _, prefix = s3_layout.split_s3_uri(str(checkpoint["uri"]))
        except ValueError:
            continue
        files = _files(ctx, prefix.rstrip("/") + "/", checkpoint.get("files"), expires_in)
        if files is None:  # deleted since (only the last ones are kept), or not fully uploaded
            continue
        metrics = checkpoint.get("metrics") if isinstance(checkpoint.get("metrics"), dict) else {}
        out.append(CheckpointOut(step=checkpoint["step"], epoch=float(checkpoint.get("epoch") or 0),
                                 created_at=checkpoint.get("created_at"), expires_at=expires_at, files=files,
                                 metrics={k: float(v) for k, v in metrics.items()
                                          if isinstance(v, (int, float)) and not isinstance(v, bool)}))
    return sorted(out, key=lambda c: c.step)


class MlflowDown(ServiceError):
    status_code = 503


def _side(raw: Any) -> EvaluationSide | None:
    if not isinstance(raw, dict):
        return None
    metrics = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return EvaluationSide.model_validate({"metrics": metrics, "per_class": raw.get("per_class"),
                                          "confusion_matrix": raw.get("confusion_matrix")})


def evaluation(ctx: TrainingContext, job: TrainingJob) -> EvaluationOut:
    """The held-out evaluation of the adapter and the base model the `evaluate` task logged to
    the job's MLflow run (`training.evaluation_report.REPORT_FILE`); `Conflict` (409) until it
    exists, 503 when MLflow cannot be read."""
    from api.schemas.trainings import run_links
    from training.evaluation_report import REPORT_FILE

    _current(ctx, job)
    report = None  # a running job may be past its evaluation already (registering): look
    if ctx.mlflow is not None and job.mlflow_run_id:
        try:
            report = ctx.mlflow.read_json_artifact(job.mlflow_run_id, REPORT_FILE)
        except MlflowUnavailable as exc:
            raise MlflowDown(f"The tracking server (MLflow) cannot be read; retry later ({exc})") from None
    if not isinstance(report, dict) or _side(report.get("adapter")) is None:
        state = f"{job.status}, stage {job.stage}" if job.stage else job.status
        raise Conflict(f"Job {job.id} has no evaluation yet ({state}): the adapter is evaluated against the base "
                       "model once its training completed")
    return EvaluationOut(job_id=job.id, task=str(report.get("task") or ""), split=str(report.get("split") or ""),
                         held_out_examples=int(report.get("held_out_examples") or 0),
                         adapter=_side(report["adapter"]), base=_side(report.get("base")),
                         samples=report.get("samples") or [],
                         mlflow_run_url=run_links(job, ctx.settings)["mlflow_run_url"])
