"""The live state of the list path: its two bulk reads (one Airflow list request for every
unsettled job of every user, one MLflow search for the running ones) are shared by all requests
of the process for `live_state_ttl_s` (`LiveState`), so N concurrent lists cost about one read
per TTL, and a request that reloads them waits at most `live_state_wait_s` (then serves the
previous state); `refresh_live` applies them to the jobs of one list."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.clients.airflow import AirflowError, DagRun
from api.clients.mlflow import MlflowUnavailable, RunSummary
from api.models import ACTIVE_TRAINING_STATUSES, TrainingJob, TrainingStatus
from api.models.base import utcnow
from api.services.live_cache import LiveCache
from api.services.trainings.context import TrainingContext, run_id
from api.services.trainings.sync import apply_run, apply_summary
from training import job_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSnapshot:
    """The Airflow runs of the unsettled jobs at one moment: `covered` run ids were asked for,
    `runs` holds those Airflow knows (a covered id missing from it has no run)."""

    covered: frozenset[str]
    runs: dict[str, DagRun]


@dataclass(frozen=True)
class LiveState:
    """The process-wide caches of the list path's two bulk reads."""

    runs: LiveCache[RunSnapshot]
    summaries: LiveCache[dict[str, RunSummary]]

    @classmethod
    def create(cls, ttl_s: float) -> LiveState:
        return cls(LiveCache("airflow runs of unsettled jobs", ttl_s), LiveCache("mlflow runs of running jobs", ttl_s))


def refresh_live(ctx: TrainingContext, jobs: Sequence[TrainingJob]) -> int:
    """Applies the shared live state (`ctx.live`; without one, read now) to unsettled `jobs`;
    outside failures with no earlier state to serve are logged and leave the jobs as they were."""
    return apply_live(ctx, jobs, live_runs(ctx))


def live_runs(ctx: TrainingContext) -> RunSnapshot | None:
    """The shared snapshot of the unsettled jobs' runs (read now if it expired), or None (logged)
    when Airflow cannot be read and there is no earlier one to serve."""
    live = ctx.live or LiveState.create(0)
    # the request's database connection goes back to the pool while the state is waited for (up
    # to `live_state_wait_s`, or read from Airflow): worker threads (QLORA_API_THREADS) each holding
    # one while they wait can empty the pool (QLORA_DATABASE_POOL_SIZE + _MAX_OVERFLOW), and the
    # other requests then get 503 "busy" after QLORA_DATABASE_POOL_TIMEOUT_S
    ctx.session.commit()
    try:
        return live.runs.get(lambda: _read_live_runs(ctx), wait_s=ctx.settings.live_state_wait_s)
    except AirflowError as exc:
        log.warning("cannot read the runs of the unsettled training jobs from Airflow: %s", exc)
        return None


def apply_live(ctx: TrainingContext, jobs: Sequence[TrainingJob], snapshot: RunSnapshot | None) -> int:
    """`refresh_live` with the runs of `snapshot` (None: the jobs are left as they were)."""
    if snapshot is None:
        return 0
    live = ctx.live or LiveState.create(0)
    now = utcnow()
    changed = sum(
        apply_run(ctx, job, snapshot.runs.get(run_id(job)), None, now)
        for job in jobs if job.status in ACTIVE_TRAINING_STATUSES and run_id(job) in snapshot.covered
    )
    running = [j for j in jobs if j.status == TrainingStatus.RUNNING and j.mlflow_run_id]
    if running and ctx.mlflow is not None:
        try:
            summaries = live.summaries.get(lambda: _read_live_summaries(ctx), wait_s=ctx.settings.live_state_wait_s)
        except MlflowUnavailable as exc:
            log.warning("cannot read %d MLflow runs: %s", len(running), exc)
            summaries = {}
        changed += sum(apply_summary(j, s) for j in running if (s := summaries.get(j.mlflow_run_id or "")))
    if changed:
        ctx.session.commit()
    return changed


def _read_live_runs(ctx: TrainingContext) -> RunSnapshot:
    """The Airflow runs of every unsettled job (all users): one request per 100 jobs. On a session
    of its own: the load may finish in the background, after the request that started it."""
    with Session(ctx.session.get_bind()) as session:
        rows = session.execute(select(TrainingJob.id, TrainingJob.airflow_run_id).where(
            TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES))).all()
    run_ids = sorted({airflow_run_id or job_spec.dag_run_id(job_id) for job_id, airflow_run_id in rows})
    return RunSnapshot(frozenset(run_ids), ctx.airflow.list_dag_runs(ctx.dag_id, run_ids) if run_ids else {})


def _read_live_summaries(ctx: TrainingContext) -> dict[str, RunSummary]:
    """The MLflow runs of every running job whose run is known (all users): one search per 100."""
    assert ctx.mlflow is not None
    with Session(ctx.session.get_bind()) as session:  # its own, as `_read_live_runs`
        rows = session.execute(
            select(TrainingJob.mlflow_run_id, TrainingJob.mlflow_experiment_id).where(
                TrainingJob.status == TrainingStatus.RUNNING.value,
                TrainingJob.mlflow_run_id.is_not(None), TrainingJob.mlflow_experiment_id.is_not(None),
            )
        ).all()
    runs = {mlflow_run_id: experiment_id for mlflow_run_id, experiment_id in rows}
    return ctx.mlflow.get_runs(runs) if runs else {}
