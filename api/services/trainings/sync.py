"""Synchronising jobs with Airflow and MLflow: what their runs say is applied to the jobs
(status, stage, times, progress, metrics, output path), and a job whose run ended is settled
once (everything cached in the database; `context.is_settled`).

    queued --task started--> running --run success--> completed
       |                        |--run failed--> failed (error from the failed task's log)
       `--stop: run marked failed in Airflow--> running (stage stopping) --process gone--> stopped

A stop marks the run failed at once, but the train task's process runs on until Airflow's next
heartbeat kills it (SIGTERM: the engine saves its partial adapter, the task uploads it, then
SIGKILL a few seconds later). So a stopped job settles `stopped` only once that process is gone:
the train task never ran, its partial adapter is in S3 (uploaded after the engine exited), or
`settings.stop_kill_deadline_s` (QLORA_STOP_KILL_DEADLINE_S) passed. `job_spec.job_state`
decides from that evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import inspect as sa_inspect

from api.clients.airflow import AirflowError, DagRun, TaskInstance
from api.clients.mlflow import MlflowUnavailable, RunSummary
from api.clients.s3 import S3Unavailable
from api.models import ACTIVE_TRAINING_STATUSES, TERMINAL_TRAINING_STATUSES, TrainingJob, TrainingStatus
from api.models.base import utcnow
from api.services import events
from api.services.trainings.context import TrainingContext, run_id
from api.services.trainings.task_logs import failure_reason, log_tail
from training import job_spec
from training import s3 as s3_layout  # the S3 key layout

log = logging.getLogger(__name__)

#: a job whose run Airflow does not know after this long ends failed
LOST_RUN_GRACE = timedelta(minutes=5)


def refresh_active(ctx: TrainingContext, jobs: Sequence[TrainingJob], with_tasks: int = 0) -> int:
    """Status, start/end times and progress of queued/running jobs, read now (the reconcile
    loop, a dataset's delete): ONE Airflow request (and one MLflow search for the running ones).
    `with_tasks`: also the task instances (so the stage) of up to that many running runs, one
    request each. Outside failures are logged and leave the jobs as they were. Returns how many
    changed."""
    active = [j for j in jobs if j.status in ACTIVE_TRAINING_STATUSES]
    if not active:
        return 0
    try:
        runs = ctx.airflow.list_dag_runs(ctx.dag_id, [run_id(j) for j in active])
    except AirflowError as exc:
        log.warning("cannot refresh %d training jobs from Airflow: %s", len(active), exc)
        return 0
    # every remote read first, then the writes and their commit: the job rows are locked (until
    # the commit) only while they are written, never while Airflow or MLflow is waited for
    tasks: dict[str, dict[str, TaskInstance] | None] = {}
    for job in active:
        run = runs.get(run_id(job))
        if run is not None and run.state == "running" and with_tasks > 0:
            with_tasks -= 1
            try:
                tasks[job.id] = ctx.airflow.list_task_instances(ctx.dag_id, run.run_id)
            except AirflowError as exc:
                log.warning("cannot read the tasks of job %s: %s", job.id, exc)
    now = utcnow()
    changed = sum(apply_run(ctx, job, runs.get(run_id(job)), tasks.get(job.id), now) for job in active)
    ctx.session.commit()
    changed += refresh_progress(ctx, [j for j in active if j.status == TrainingStatus.RUNNING])
    ctx.session.commit()
    return changed


def refresh_one(ctx: TrainingContext, job: TrainingJob) -> dict[str, TaskInstance]:
    """Reads one job's run and task instances, applies them, and settles the job if its run
    ended; returns the task instances. Raises `AirflowError`."""
    return refresh_with_run(ctx, job, ctx.airflow.get_dag_run(ctx.dag_id, run_id(job)))


def refresh_with_run(ctx: TrainingContext, job: TrainingJob, run: DagRun | None) -> dict[str, TaskInstance]:
    """`refresh_one` with the job's run already read (None: Airflow has no run of it): reads its
    task instances, applies both, settles the job if its run ended. Raises `AirflowError`."""
    tis = ctx.airflow.list_task_instances(ctx.dag_id, run_id(job)) if run else {}
    apply_run(ctx, job, run, tis, utcnow())
    if job.status in TERMINAL_TRAINING_STATUSES and run is not None and job.settled_at is None:
        settle(ctx, job, run, tis)
    return tis


# --- Airflow: the run's state ---------------------------------------------------------------
def apply_run(
    ctx: TrainingContext, job: TrainingJob, run: DagRun | None, tis: dict[str, TaskInstance] | None, now: datetime
) -> int:
    """Maps the run (and, when read, its task instances and the progress of a requested stop)
    onto the job; 1 if it changed. Without task instances (the list path) a stop in flight
    keeps the job's last known status. Every status or stage change is recorded as an event."""
    status, stage, settled = job.status, job.stage, job.settled_at
    changed = _apply_run(ctx, job, run, tis, now)
    if job.status not in TERMINAL_TRAINING_STATUSES:
        events.state_changed(ctx.session, job, status, stage)
    # the end is recorded once settled, after the last epochs and checkpoints (events.job_settled)
    if settled is None and job.settled_at is not None:  # a lost run is settled at once
        events.job_settled(ctx, job)
    return changed


def _apply_run(
    ctx: TrainingContext, job: TrainingJob, run: DagRun | None, tis: dict[str, TaskInstance] | None, now: datetime
) -> int:
    before = (job.status, job.stage, job.started_at, job.completed_at)
    if job.status in TERMINAL_TRAINING_STATUSES:
        return 0
    if run is None:
        created = job.created_at
        if job.stop_requested_at is not None:
            job.status, job.completed_at = TrainingStatus.STOPPED.value, now
        elif job.run_triggered_at is None:
            pass  # committed, not triggered yet (or its request died first): the reconcile pass triggers it
        elif created is not None and now - created > LOST_RUN_GRACE:
            job.status, job.completed_at = TrainingStatus.FAILED.value, now
            job.error = f"The Airflow run {run_id(job)} of this job no longer exists"
            job.settled_at, job.log_tail = now, ""
        return int(before != (job.status, job.stage, job.started_at, job.completed_at))
    states = {t: ti.state for t, ti in tis.items()} if tis is not None else None
    stop_requested = job.stop_requested_at is not None
    exited = training_exited(ctx, job, now) if stop_requested and states is not None else None
    try:
        state = job_spec.job_state(
            run.state, stop_requested=stop_requested, task_states=states, training_exited=exited
        )
    except ValueError:
        log.warning("job %s: unexpected Airflow run state %r", job.id, run.state)
        return 0
    if state in job_spec.TERMINAL_STATES and not stop_requested and _stop_recorded_since(ctx, job):
        # the stop marked the run failed after this job was loaded: it ends stopped, not failed
        return _apply_run(ctx, job, run, tis, now)
    if state is None:  # a stop in flight, not readable in bulk: keep the last known state
        job.stage = job_spec.Stage.STOPPING.value
        return int(before != (job.status, job.stage, job.started_at, job.completed_at))
    job.status = state.value
    trained = (states or {}).get(job_spec.TRAIN_TASK_ID) == "success"  # a stop that came too late changes nothing
    stopping = stop_requested and state not in job_spec.TERMINAL_STATES and not trained
    if (stage := job_spec.job_stage(states, stopping=stopping)) is not None:
        job.stage = stage.value
    if state is not job_spec.JobState.QUEUED and job.started_at is None:
        job.started_at = run.start_date or now
    if state in job_spec.TERMINAL_STATES:
        job.completed_at = run.end_date or now
        if state is job_spec.JobState.COMPLETED:
            job.progress = 1.0
            job.output_path = s3_layout.s3_uri(ctx.settings.s3_bucket, s3_layout.adapter_prefix(job.id))
    return int(before != (job.status, job.stage, job.started_at, job.completed_at))


def _stop_recorded_since(ctx: TrainingContext, job: TrainingJob) -> bool:
    """Whether a stop was committed after `job` was loaded, read again from the database. A stop
    commits its request before it marks a run that has not trained yet failed in Airflow, so a
    reader that loaded the job before the stop and read the run after it finds the request here
    (instead of settling the stopped job `failed`: seen by bench.load for 12 of 55 jobs stopped at
    once while Airflow answered slowly)."""
    if job.stop_requested_at is not None or not sa_inspect(job).persistent:
        return False
    ctx.session.refresh(job, attribute_names=["stop_requested_at"])
    return job.stop_requested_at is not None


def training_exited(ctx: TrainingContext, job: TrainingJob, now: datetime) -> bool:
    """Whether the training process of a job being stopped is surely gone: the train task
    published the engine's final result (it does so once the engine exited; the partial adapter,
    uploaded by the engine before it exits, is then complete), or the kill deadline passed
    (Airflow SIGKILLs the task, the engine dies with it). The result is published while the engine
    runs too: only the copy marked `exited: true` counts."""
    asked = job.stop_requested_at
    if asked is not None and now - asked >= timedelta(seconds=ctx.settings.stop_kill_deadline_s):
        return True
    try:
        if ctx.s3 is None:
            return False
        # published live too (`exited: false`); a manifest without the field is a final one
        published = ctx.s3.get_json(s3_layout.training_result_key(job.id))
        return isinstance(published, dict) and published.get("exited", True) is True
    except S3Unavailable as exc:
        log.warning("cannot check the training result of job %s: %s", job.id, exc)
        return False


def partial_adapter(ctx: TrainingContext, job: TrainingJob) -> str | None:
    """The S3 URI of the partial adapter a stopped job's engine uploaded, once it is complete
    (`adapter_config.json` is uploaded last); else None."""
    prefix = s3_layout.adapter_prefix(job.id)
    try:
        if ctx.s3 is not None and ctx.s3.head(prefix + "adapter_config.json") is not None:
            return s3_layout.s3_uri(ctx.settings.s3_bucket, prefix)
    except S3Unavailable as exc:
        log.warning("cannot check the partial adapter of job %s: %s", job.id, exc)
    return None


# --- MLflow: the run id, progress and metrics -----------------------------------------------
def find_mlflow_run(ctx: TrainingContext, job: TrainingJob, tis: dict[str, TaskInstance] | None) -> None:
    """The MLflow run id the train task pushes to XCom as soon as the run exists."""
    if job.mlflow_run_id:
        return
    if tis is not None and (tis.get(job_spec.TRAIN_TASK_ID) is None or tis[job_spec.TRAIN_TASK_ID].state is None):
        return
    mlflow_run_id = ctx.airflow.get_xcom(ctx.dag_id, run_id(job), job_spec.TRAIN_TASK_ID, job_spec.XCOM_MLFLOW_RUN_ID)
    if isinstance(mlflow_run_id, str) and mlflow_run_id:
        job.mlflow_run_id = mlflow_run_id
        exp = ctx.airflow.get_xcom(
            ctx.dag_id, run_id(job), job_spec.TRAIN_TASK_ID, job_spec.XCOM_MLFLOW_EXPERIMENT_ID
        )
        job.mlflow_experiment_id = str(exp) if exp else None


def refresh_progress(ctx: TrainingContext, jobs: Sequence[TrainingJob], single: bool = False) -> Any:
    """Progress (monotonic) and latest metrics from MLflow: one request for all `jobs`. Returns
    how many changed, or with `single` the run summary of the one job (None if unread)."""
    tracked = [j for j in jobs if j.mlflow_run_id]
    if ctx.mlflow is None or not tracked:
        return None if single else 0
    try:
        if single or any(not j.mlflow_experiment_id for j in tracked):
            summaries = {j.mlflow_run_id: ctx.mlflow.get_run(j.mlflow_run_id) for j in tracked}
        else:
            summaries = ctx.mlflow.get_runs({j.mlflow_run_id: j.mlflow_experiment_id for j in tracked})
    except MlflowUnavailable as exc:
        log.warning("cannot read %d MLflow runs: %s", len(tracked), exc)
        return None if single else 0
    changed = 0
    for job in tracked:
        summary = summaries.get(job.mlflow_run_id or "")
        if summary is None:
            continue
        changed += apply_summary(job, summary)
    return summaries.get(tracked[0].mlflow_run_id) if single else changed


def apply_summary(job: TrainingJob, summary: RunSummary) -> int:
    """Maps an MLflow run's progress (never lower than the job's) and metrics onto the job; 1 if
    either changed."""
    before = (job.progress, job.metrics)
    job.mlflow_experiment_id = job.mlflow_experiment_id or summary.experiment_id
    if summary.progress is not None:
        job.progress = max(job.progress or 0.0, summary.progress)
    if summary.metrics:
        job.metrics = {**(job.metrics or {}), **summary.metrics}
    return int(before != (job.progress, job.metrics))


# --- settling ---------------------------------------------------------------------------------
def settle(ctx: TrainingContext, job: TrainingJob, run: DagRun, tis: dict[str, TaskInstance]) -> None:
    """Caches a terminal job's details: MLflow run and metrics, stage, output path, error and
    log tail (left unset, to be read once more, when the log cannot be read now)."""
    if (stage := job_spec.job_stage({t: ti.state for t, ti in tis.items()})) is not None:
        job.stage = stage.value
    find_mlflow_run(ctx, job, tis)
    if ctx.mlflow is not None and job.mlflow_run_id:
        try:
            summary = ctx.mlflow.get_run(job.mlflow_run_id)
            if summary is not None:
                apply_summary(job, summary)
        except MlflowUnavailable as exc:
            log.warning("job %s settled without MLflow metrics: %s", job.id, exc)
    if job.status == TrainingStatus.COMPLETED:
        result = ctx.airflow.get_xcom(ctx.dag_id, run_id(job), "finalize")
        if isinstance(result, dict):
            job.output_path = result.get("output_path") or job.output_path
            registered = result.get("registered_model")
            if isinstance(registered, dict) and registered.get("name") and registered.get("version"):
                job.registered_model = {"name": str(registered["name"]), "version": str(registered["version"])}
        job.progress = 1.0
    elif job.status == TrainingStatus.STOPPED:
        job.output_path = partial_adapter(ctx, job)
    elif job.status == TrainingStatus.FAILED:
        job.error = job.error or failure_reason(ctx, job, run, tis)
        # e.g. past its max_runtime_minutes: the engine stopped and uploaded its partial adapter
        job.output_path = job.output_path or partial_adapter(ctx, job)
    try:
        job.log_tail = log_tail(ctx, job, tis)
    except AirflowError as exc:
        log.warning("job %s settled without its log tail: %s", job.id, exc)
        job.log_tail = None  # not the tail last read while it ran: read once more (`context.is_settled`)
    job.settled_at = utcnow()
    events.job_settled(ctx, job)
