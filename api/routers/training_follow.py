"""`/v1/trainings/{job_id}/events|metrics|logs`: follow a job without polling its detail blindly."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import CurrentUser, TrainingsDep
from api.routers.openapi_doc import (
    JOB_NOT_FOUND,
    METRIC_HISTORY,
    TRAINING_EVENTS,
    TRAINING_LOG,
    UNAUTHORIZED,
    error,
    ok_example,
)
from api.schemas.events import MetricHistory, TrainingEventOut, TrainingEventPage
from api.services import events
from api.services.errors import InvalidInput
from api.services.trainings import history, reads

router = APIRouter(prefix="/trainings", tags=["trainings"], responses=UNAUTHORIZED)

_NOT_FOUND = JOB_NOT_FOUND
_BAD_QUERY = {"openapi_extra": {"x-validation-status": 400}}
MAX_EVENTS = 1000
MAX_METRIC_STEPS = 10_000
MAX_LOG_LINES = 100_000


@router.get(
    "/{job_id}/events",
    response_model=TrainingEventPage,
    responses={200: ok_example(TRAINING_EVENTS), **_NOT_FOUND,
               400: error("`after` or `limit` out of range", "limit: Input should be less than or equal to 1000")},
    **_BAD_QUERY,
    summary="The job's events, oldest first",
    description="Status and stage changes (both values), epochs with their eval metrics, checkpoints, the stop "
    "request, warnings and errors. Recorded by the service whether or not anyone watches. Page with `after` = the "
    "`id` of the last event seen: the cursor is stable while new events arrive.",
)
def list_events(
    job_id: str, user: CurrentUser, trainings: TrainingsDep,
    after: Annotated[int | None, Query(ge=0, description="Only events after this event id.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS, description=f"At most this many (1..{MAX_EVENTS}).")] = 100,
) -> TrainingEventPage:
    job = reads.owned_job(trainings, user, job_id)
    page = events.list_events(trainings.session, job.id, after, limit)
    return TrainingEventPage(data=[TrainingEventOut.model_validate(e) for e in page.events], has_more=page.has_more)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricHistory,
    responses={200: ok_example(METRIC_HISTORY), **_NOT_FOUND,
               400: error("`keys`, `after_step` or `limit` out of range",
                          "keys: 1 to 50 comma-separated metric names of at most 250 characters"),
               503: error("MLflow cannot be read; retry later",
                          "The metrics service (MLflow) cannot be read; retry later (connection refused)")},
    **_BAD_QUERY,
    summary="Per-step history of the job's metrics (from MLflow)",
    description="`{key: [{step, value, timestamp}]}` for each of `keys` (comma-separated; every metric of the run "
    "when absent), only steps above `after_step`, at most `limit` steps. When more steps remain, the `X-Has-More` "
    "header is `true` and `X-Next-After-Step` is the `after_step` of the next page.",
)
def metric_history(
    job_id: str, user: CurrentUser, trainings: TrainingsDep, response: Response,
    keys: Annotated[str | None, Query(max_length=2000, description="e.g. `loss,learning_rate`.")] = None,
    after_step: Annotated[int, Query(ge=-1, description="Only points with a step above this.")] = -1,
    limit: Annotated[int, Query(ge=1, le=MAX_METRIC_STEPS, description="At most this many steps.")] = 1000,
) -> dict:
    job = reads.owned_job(trainings, user, job_id)
    wanted = None
    if keys is not None:
        wanted = list(dict.fromkeys(k.strip() for k in keys.split(",") if k.strip()))
        if not wanted or len(wanted) > 50 or any(len(k) > 250 for k in wanted):
            raise InvalidInput("keys: 1 to 50 comma-separated metric names of at most 250 characters")
    page = history.metric_history(trainings, job, wanted, after_step, limit)
    response.headers["X-Has-More"] = "true" if page.has_more else "false"
    if page.next_after_step is not None:
        response.headers["X-Next-After-Step"] = str(page.next_after_step)
    return page.series


@router.get(
    "/{job_id}/logs",
    response_class=Response,
    responses={**_NOT_FOUND,
               400: error("`offset` or `limit` out of range", "offset: Input should be greater than or equal to 0"),
               200: {"content": {"text/plain": {"example": TRAINING_LOG}}, "description": "Lines `offset`.. of the log"},
               503: error("Airflow cannot be reached; retry later",
                          "The pipeline service (Airflow) is unavailable; retry later")},
    **_BAD_QUERY,
    summary="The whole training log, paged by lines",
    description="The train task's log (its latest try; the latest task that ran when training never started) as "
    "text, `limit` lines from line `offset`. Headers: `X-Next-Offset` (the `offset` of the next page), "
    "`X-Total-Lines` (so far), `X-Log-Complete: true` once the job ended and this page reaches the end.",
)
def full_log(
    job_id: str, user: CurrentUser, trainings: TrainingsDep,
    offset: Annotated[int, Query(ge=0, description="The first line (0-based).")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_LINES, description="At most this many lines.")] = 1000,
) -> Response:
    job = reads.owned_job(trainings, user, job_id)
    page = history.train_log(trainings, job, offset, limit)
    return Response(page.text, media_type="text/plain; charset=utf-8", headers={
        "X-Next-Offset": str(page.next_offset), "X-Total-Lines": str(page.total_lines),
        "X-Log-Complete": "true" if page.complete else "false"})
