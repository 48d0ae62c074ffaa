"""Reading jobs back for their owner: one job, the list (its unsettled jobs refreshed from the
shared live state), and what the detail adds to the job's columns (log tail, ETA).

A settled job (terminal, its log tail, metrics, stage, error and output path cached in the
database) never reads Airflow or MLflow again. Per-job reads (task instances, logs, XCom, the
partial adapter) happen only on the detail of an unsettled job (and in the reconcile pass), and
the detail's give up after `detail_airflow_timeout_s` (it then shows what is stored)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from api.clients.airflow import AirflowError, AirflowTimeout, TaskInstance
from api.clients.mlflow import RunSummary
from api.core.server_timing import measured
from api.models import ACTIVE_TRAINING_STATUSES, TrainingJob, TrainingStatus, User
from api.models.base import utcnow
from api.services.errors import NotFound
from api.services.trainings.context import TrainingContext, is_settled, run_id
from api.services.trainings.live_state import apply_live, live_runs, refresh_live
from api.services.trainings.sync import find_mlflow_run, refresh_progress, refresh_with_run
from api.services.trainings.task_logs import log_tail
from training import job_spec

log = logging.getLogger(__name__)

#: the columns of a job in the list (`GET /v1/trainings`): those `TrainingSummary` reads
SUMMARY_COLUMNS = (
    TrainingJob.id, TrainingJob.model_id, TrainingJob.dataset_id, TrainingJob.output_name, TrainingJob.status,
    TrainingJob.stage, TrainingJob.progress, TrainingJob.created_at, TrainingJob.started_at,
    TrainingJob.completed_at, TrainingJob.output_path,
)


@dataclass(frozen=True)
class DetailReadback:
    """What the detail shows beyond the job's columns."""

    logs: str = ""
    eta_seconds: float | None = None
    #: the fields shown as last stored because Airflow did not answer in time, and why
    stale: tuple[str, ...] = ()
    stale_reason: str | None = None


def owned_job(ctx: TrainingContext, owner: User, job_id: str) -> TrainingJob:
    """The owner's job `job_id`; `NotFound` (404) for an unknown job or another user's."""
    job = ctx.session.get(TrainingJob, job_id)
    if job is None or job.owner_id != owner.id:
        raise NotFound("Training job not found")
    return job


@dataclass(frozen=True)
class JobFilters:
    """Filters of the list: any of the statuses, the model, the dataset, created after, and
    metadata pairs (all must match)."""

    statuses: tuple[str, ...] = ()
    model_id: str | None = None
    dataset_id: str | None = None
    created_after: datetime | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    def conditions(self, owner: User) -> list[Any]:
        where: list[Any] = [TrainingJob.owner_id == owner.id]
        if self.statuses:
            where.append(TrainingJob.status.in_(self.statuses))
        if self.model_id is not None:
            where.append(TrainingJob.model_id == self.model_id)
        if self.dataset_id is not None:
            where.append(TrainingJob.dataset_id == self.dataset_id)
        if self.created_after is not None:
            where.append(TrainingJob.created_at > self.created_after)
        where += [TrainingJob.job_metadata[key].as_string() == value for key, value in self.metadata]
        return where


def count_jobs(ctx: TrainingContext, owner: User, filters: JobFilters = JobFilters()) -> int:
    """How many of the owner's jobs match (the list's `X-Total-Count`)."""
    return ctx.session.scalar(select(func.count()).select_from(TrainingJob).where(*filters.conditions(owner))) or 0


def list_jobs(ctx: TrainingContext, owner: User, limit: int | None = None, offset: int = 0,
              filters: JobFilters = JobFilters()) -> list[Any]:
    """The owner's jobs, newest first, optionally one page: rows of `SUMMARY_COLUMNS` (one
    query), the unsettled ones replaced by their jobs refreshed from the shared live state (no
    remote call of its own unless the state expired). Each item has the attributes of the
    columns. With a status filter, every unsettled job of the owner is refreshed first, so the
    filter sees the same states the list shows."""
    if filters.statuses:
        refresh_live(ctx, ctx.session.scalars(select(TrainingJob).where(
            TrainingJob.owner_id == owner.id, TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES))).all())
    query = (
        select(*SUMMARY_COLUMNS).where(*filters.conditions(owner))
        .order_by(TrainingJob.created_at.desc(), TrainingJob.id).offset(offset).limit(limit)
    )
    rows: list[Any] = list(ctx.session.execute(query))
    active_ids = [r.id for r in rows if r.status in ACTIVE_TRAINING_STATUSES]
    if active_ids:
        active = ctx.session.scalars(select(TrainingJob).where(TrainingJob.id.in_(active_ids))).all()
        refresh_live(ctx, active)
        fresh = {job.id: job for job in active}
        rows = [fresh.get(r.id, r) for r in rows]
    return rows


def read_detail(ctx: TrainingContext, job: TrainingJob) -> DetailReadback:
    """The extras of the detail view (logs, ETA). A settled job's come from the database alone.
    An unsettled one takes its run's state from the live state the list shares (`live_state`),
    then reads what only Airflow has of it (task instances, so the stage; the MLflow run id; the
    log tail) within `detail_airflow_timeout_s`, and is settled if its run ended. What Airflow
    does not answer in time is shown as last stored and named in `stale` (never waited for)."""
    if is_settled(job):
        return DetailReadback(logs=job.log_tail or "")
    timeout_s = ctx.settings.detail_airflow_timeout_s
    quick = replace(ctx, airflow=_WithinDeadline(ctx.airflow, timeout_s) if hasattr(ctx.airflow, "with_timeout")
                    else ctx.airflow, mlflow=_Measured(ctx.mlflow, "mlflow") if ctx.mlflow is not None else None)
    with measured("live"):
        snapshot = live_runs(ctx) if job.status in ACTIVE_TRAINING_STATUSES else None
    logs, eta = "", None
    unread: tuple[str, ...] = ("status", "stage", "logs")  # what is not read yet (stale if Airflow fails)
    applied = False
    try:
        if job.settled_at is None:
            if snapshot is not None and run_id(job) in snapshot.covered:
                run = snapshot.runs.get(run_id(job))  # the status the list shows
            else:  # not in the shared state (started after it was read, ended unsettled, or no state)
                run = quick.airflow.get_dag_run(ctx.dag_id, run_id(job))
            unread = ("stage", "logs")
            tis = refresh_with_run(quick, job, run)  # the run applied once, with its task instances
            applied = True
            # committed before each next remote read: the job's row stays locked only while it is
            # written (a concurrent detail, list or reconcile writing it would wait meanwhile)
            ctx.session.commit()
            if job.status == TrainingStatus.RUNNING:
                unread = ("progress", "eta_seconds", "logs")
                find_mlflow_run(quick, job, tis)
                ctx.session.commit()
                summary = refresh_progress(quick, [job], single=True)
                ctx.session.commit()
                if job.stop_requested_at is None:
                    eta = eta_seconds(job, tis, summary)
        else:  # settled before log tails were cached: read it once
            unread = ("logs",)
            tis = quick.airflow.list_task_instances(ctx.dag_id, run_id(job))
        unread = ("logs",)
        if not is_settled(job):
            # kept while the job runs too: the tail shown when Airflow does not answer in time
            job.log_tail = logs = log_tail(quick, job, tis)
        logs = job.log_tail or ""
        unread = ()
    except AirflowError as exc:
        log.warning("job %s: detail read from its stored state (%s unread): %s", job.id, ", ".join(unread), exc)
        if not applied:  # status, times and progress as the list shows them (its shared state)
            apply_live(ctx, [job], snapshot)
        logs = job.log_tail or "(logs unavailable: the pipeline service (Airflow) did not answer)"
        reason = (f"The pipeline service (Airflow) did not answer within {timeout_s:g} s (or cannot be reached): "
                  f"{', '.join(unread)} show what was last stored; ask again for fresh values")
        # always: the queries above autoflush, so `session.dirty` can be empty with changes pending
        ctx.session.commit()
        return DetailReadback(logs, eta, unread, reason)
    ctx.session.commit()
    return DetailReadback(logs, eta)


class _WithinDeadline:
    """`airflow` whose calls share one time budget: each is sent with the time left (and none is
    sent once it is spent: `AirflowTimeout`), so the detail's reads together take at most about
    `budget_s`, however many there are."""

    def __init__(self, airflow: Any, budget_s: float) -> None:
        self._airflow, self._budget_s = airflow, budget_s
        self._deadline = time.monotonic() + budget_s

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise AirflowTimeout(f"Airflow did not answer the detail's reads within {self._budget_s:g} s")
            with measured("airflow"):  # the answer's Server-Timing header
                return getattr(self._airflow.with_timeout(left), name)(*args, **kwargs)

        return call


class _Measured:
    """A client whose calls count in the part `part` of the answer's Server-Timing header."""

    def __init__(self, client: Any, part: str) -> None:
        self._client, self._part = client, part

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with measured(self._part):
                return attr(*args, **kwargs)

        return call


def eta_seconds(job: TrainingJob, tis: dict[str, TaskInstance], summary: RunSummary | None) -> float | None:
    """Seconds of training left, from the train task's (or MLflow run's) start and the progress."""
    train = tis.get(job_spec.TRAIN_TASK_ID)
    started: datetime | None = train.start_date if train is not None else None
    if started is None and summary is not None and summary.start_time_ms:
        started = datetime.fromtimestamp(summary.start_time_ms / 1000, tz=utcnow().tzinfo)
    progress = job.progress or 0.0
    if started is None or not 0 < progress < 1:
        return None
    elapsed = (utcnow() - started).total_seconds()
    return round(max(elapsed, 0.0) * (1 - progress) / progress, 1)
