"""`/v1/trainings`: start QLoRA jobs, watch them, stop them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response, status

from api.deps import CurrentUser, IdempotencyDep, PAGED_LIST_ROUTE, PageDep, TrainingsDep
from api.routers.openapi_doc import (
    JOB_ID,
    JOB_NOT_FOUND,
    TRAINING_DETAIL,
    TRAINING_REQUEST,
    TRAINING_SUMMARY,
    UNAUTHORIZED,
    body_example,
    error,
    ok_example,
)
from api.schemas.trainings import (
    StopResponse,
    TrainingDetail,
    TrainingRequest,
    TrainingStartResponse,
    TrainingSummary,
)
from api.services.errors import InvalidInput
from api.services import mlflow_users
from api.services.trainings import reads, start_stop

router = APIRouter(prefix="/trainings", tags=["trainings"], responses=UNAUTHORIZED)
TRAINING_STATUSES = ("queued", "running", "completed", "failed", "stopped")

_UNAVAILABLE = {503: error("Airflow cannot be reached; retry later",
                           "The pipeline service (Airflow) is unavailable; retry later")}
_NOT_FOUND = JOB_NOT_FOUND


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainingStartResponse,
    responses={202: ok_example({"job_id": JOB_ID, "status": "queued", "message": "Training job initiated successfully"}),
               400: error("Invalid parameters, or the model or dataset is unknown, not ready or does not fit "
                          "(`detail` names every problem)",
                          "lora_rank must be between 1 and 16 for model flamingo-tiny-classification, got 32"),
               409: error("The `Idempotency-Key` was used with another request body",
                          "Idempotency-Key 'k-1' was already used at 2026-11-30T17:00:00Z for another request body "
                          "(POST /v1/trainings); retry with the same body to get that answer, or use a new key for "
                          "a new request"),
               429: error("You have as many queued or running jobs as allowed; retry after `Retry-After` seconds",
                          "You have 4 queued or running training jobs, the most allowed at once (4); wait for one "
                          "to end (or stop one with POST /v1/trainings/{job_id}/stop), then retry"),
               503: error("Airflow cannot be reached, or the training DAG is not loaded yet; retry after "
                          "`Retry-After` seconds",
                          "The pipeline (Airflow DAG qlora_training) is not loaded in Airflow yet (not parsed, or "
                          "renamed); retry in a minute")},
    openapi_extra=body_example(TRAINING_REQUEST, **{"x-validation-status": 400}),
    summary="Start a QLoRA fine-tuning job",
    description="Validates everything before any compute is spent (model, your ready dataset and its fit to the "
    "model type, parameter bounds, LoRA rank in the model's range, target modules, output name), then runs the "
    "`qlora_training` Airflow DAG (run id `train-{job_id}`). At most `QLORA_MAX_ACTIVE_JOBS_PER_USER` of your jobs "
    "may be queued or running at once (429 beyond). Send an `Idempotency-Key` to retry safely: the same key with "
    "the same body within 24 h answers the first answer again (the same `job_id`, header `Idempotent-Replayed: "
    "true`), with another body 409.",
)
def start_training(
    body: TrainingRequest, user: CurrentUser, trainings: TrainingsDep, request: Request,
    background: BackgroundTasks, idempotency: IdempotencyDep,
) -> TrainingStartResponse:
    answer, replayed = start_stop.start_job(trainings, user, body, idempotency.key)
    # after the answer: the user may read the registered model this job's adapter will be
    background.add_task(mlflow_users.after_job_start, mlflow_users.accounts(request), user.username, body.output_name)
    idempotency.answered(replayed)
    return answer


def job_filters(
    request: Request,
    status: Annotated[list[str] | None, Query(description="Only jobs in these statuses (repeat it, or separate "
                                             "them with commas): queued, running, completed, failed, stopped.")] = None,
    model_id: Annotated[str | None, Query(max_length=128, description="Only jobs of this base model.")] = None,
    dataset_id: Annotated[str | None, Query(max_length=64, description="Only jobs on this dataset.")] = None,
    created_after: Annotated[datetime | None, Query(description="Only jobs created after this time (ISO 8601; "
                                                    "UTC when it has no zone).")] = None,
) -> reads.JobFilters:
    """The list's filters; `metadata[key]=value` (any number) are read from the query string."""
    statuses = tuple(dict.fromkeys(p.strip() for v in status or [] for p in v.split(",") if p.strip()))
    if unknown := [v for v in statuses if v not in TRAINING_STATUSES]:
        raise InvalidInput(f"status: unknown status {unknown[0]!r}; use {', '.join(TRAINING_STATUSES)}")
    metadata = []
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata"):
            match = re.fullmatch(r"metadata\[([A-Za-z0-9_.-]{1,64})\]", name)
            if match is None:
                raise InvalidInput(f"{name[:80]}: write metadata filters as metadata[key]=value, keys of 1-64 "
                                   "letters, digits, '_', '-' or '.'")
            metadata.append((match.group(1), value))
    if created_after is not None and created_after.tzinfo is None:
        created_after = created_after.replace(tzinfo=UTC)
    return reads.JobFilters(statuses, model_id, dataset_id, created_after, tuple(metadata))


@router.get(
    "",
    response_model=list[TrainingSummary],
    responses={200: ok_example([TRAINING_SUMMARY]), **PAGED_LIST_ROUTE["responses"]},
    openapi_extra=PAGED_LIST_ROUTE["openapi_extra"],
    summary="Your training jobs, newest first",
    description="All your jobs, newest first; `limit` and `offset` return one page of them instead. The state of "
    "unfinished jobs is at most a few seconds old (read from Airflow and MLflow in bulk, shared by all requests). "
    "Filters: `status`, `model_id`, `dataset_id`, `created_after`, and `metadata[key]=value` (any number). The "
    "`X-Total-Count` header counts every job that matches the filters.",
)
def list_trainings(user: CurrentUser, trainings: TrainingsDep, page: PageDep,
                   filters: Annotated[reads.JobFilters, Depends(job_filters)]) -> Response:
    jobs = reads.list_jobs(trainings, user, page.limit, page.offset, filters)
    total = reads.count_jobs(trainings, user, filters)
    return Response(TrainingSummary.list_json(jobs), media_type="application/json",
                    headers={"X-Total-Count": str(total)})


@router.get(
    "/{job_id}",
    response_model=TrainingDetail,
    responses={200: ok_example(TRAINING_DETAIL), **_NOT_FOUND},
    summary="Status, progress, metrics and recent logs of a job",
    description="Read back on each call: `status` (`queued`, `running`, `completed`, `failed` or `stopped`) from "
    "the live state the list shares (at most a few seconds old), `stage` (the pipeline step) and the log tail from "
    "Airflow, progress, metrics and ETA from MLflow; `training_params` every value the job really uses. What "
    "Airflow does not answer within `QLORA_DETAIL_AIRFLOW_TIMEOUT_S` is shown as last stored and named in `stale` "
    "(`stale_reason` says why): ask again. Links open the run in the Airflow and MLflow UIs.",
)
def get_training(job_id: str, user: CurrentUser, trainings: TrainingsDep) -> TrainingDetail:
    job = reads.owned_job(trainings, user, job_id)
    read = reads.read_detail(trainings, job)
    return TrainingDetail.from_job(job, trainings.settings, logs=read.logs, eta_seconds=read.eta_seconds,
                                   stale=read.stale, stale_reason=read.stale_reason)


@router.post(
    "/{job_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StopResponse,
    responses={202: ok_example({"message": f"Stop request received for {JOB_ID}"}),
               400: error("The job is not queued or running",
                          f"Job {JOB_ID} is completed: only queued or running jobs can be stopped"),
               409: error("The training already finished (the job is evaluating or registering its adapter): it "
                          "is not stopped and ends completed",
                          f"Job {JOB_ID} has finished training and is now evaluating its adapter: it is not stopped "
                          "(that would throw away a finished training) and ends completed"),
               **_NOT_FOUND,
               503: error("The stop is recorded but cannot reach the training now (the storage service, S3, is "
                          "unavailable), or the service database is: retry the same request (it repeats the stop)",
                          f"The stop of job {JOB_ID} is recorded, but it cannot reach the training now: the storage "
                          f"service (S3) is unavailable. Retry POST /v1/trainings/{JOB_ID}/stop in a few seconds "
                          "(asking again repeats the request)")},
    summary="Stop a queued or running job",
    description="Stops the training, and only it: the train task stops its engine (SIGTERM: it saves its partial "
    "adapter) and the job ends `stopped` within seconds; before the training started the Airflow run is ended. A "
    "training that finishes before the stop reaches it completes the job as usual (`stop_requested` stays true). "
    "When Airflow does not answer (slow, refused, unreachable) the stop is recorded all the same (202) and the "
    "train task reads it before it starts its engine and while it trains.",
)
def stop_training(job_id: str, user: CurrentUser, trainings: TrainingsDep) -> StopResponse:
    job = start_stop.stop_job(trainings, user, job_id)
    return StopResponse(message=f"Stop request received for {job.id}")
