"""The background pass over every user's jobs (`api.main`'s reconcile loop): refreshes the
unsettled ones in bulk, follows the stops in flight, finds the MLflow runs of running jobs and
settles the jobs whose run ended, so that the lists (which read in bulk only) stay true."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.clients.airflow import AirflowError, TrainingAirflowApi
from api.clients.mlflow import MlflowApi
from api.clients.s3 import S3Storage
from api.core.config import Settings
from api.models import ACTIVE_TRAINING_STATUSES, TERMINAL_TRAINING_STATUSES, TrainingJob, TrainingStatus
from api.models.base import utcnow
from api.services import events, idempotency
from api.services.trainings.context import TrainingContext, run_id
from api.services.trainings.start_stop import end_orphan_runs, trigger_pending
from api.services.trainings.sync import find_mlflow_run, refresh_active, refresh_one, settle
from training import job_spec

log = logging.getLogger(__name__)


def reconcile(ctx: TrainingContext, batch: int = 500, settle_batch: int = 20) -> int:
    """One background pass: trigger the runs of jobs left without one and end runs left
    without a job, refresh every unsettled job in bulk, find the MLflow runs of running jobs,
    and settle (error, metrics, output path) jobs whose run ended. Each job's work is committed
    on its own: a job row written here stays locked only until then, not while the pass waits
    on Airflow and MLflow for the other jobs (a detail or list that writes it would wait too:
    bench.load measured seconds of `db` time in the slowest details when it was one commit)."""
    changed = 0
    try:
        changed += trigger_pending(ctx, settle_batch)
        changed += end_orphan_runs(ctx)
    except AirflowError as exc:  # e.g. the DAG not parsed yet: no verdict, the next pass retries
        log.warning("cannot trigger or end runs now: %s", exc)
    idempotency.purge_expired(ctx.session)
    ctx.session.commit()
    active = ctx.session.scalars(
        select(TrainingJob).where(TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES))
        .order_by(TrainingJob.updated_at).limit(batch)
    ).all()
    changed += refresh_active(ctx, active, with_tasks=settle_batch)  # the stages too: events are recorded unwatched
    # jobs being stopped: the bulk read cannot tell whether their training process is gone
    for job in [j for j in active if j.stop_requested_at is not None
                and j.status in ACTIVE_TRAINING_STATUSES][:settle_batch]:
        try:
            tis = refresh_one(ctx, job)
            changed += int(job.status in TERMINAL_TRAINING_STATUSES)
            train = tis.get(job_spec.TRAIN_TASK_ID)
            if job.status in ACTIVE_TRAINING_STATUSES and ((train.state if train else None) or "").lower() in (
                    "", "none", "scheduled", "queued"):  # the train task has not started
                # a stop recorded while Airflow did not answer (`start_stop._stop_unread`): its run
                # has not trained, so it is ended now, as the stop itself would have, instead of
                # going on until its train task reads the request
                log.info("job %s: ending its run %s, stopped while Airflow did not answer", job.id, run_id(job))
                ctx.airflow.set_dag_run_state(ctx.dag_id, run_id(job), "failed")
        except AirflowError as exc:
            log.warning("cannot read the stop of job %s: %s", job.id, exc)
        ctx.session.commit()
    for job in [j for j in active if j.status == TrainingStatus.RUNNING and not j.mlflow_run_id][:settle_batch]:
        try:
            find_mlflow_run(ctx, job, None)
        except AirflowError as exc:
            log.warning("cannot read the MLflow run id of job %s: %s", job.id, exc)
        ctx.session.commit()
    for job in [j for j in active if j.status == TrainingStatus.RUNNING and j.mlflow_run_id][:settle_batch]:
        events.follow(ctx, job)  # epochs and checkpoints since the last events, in step order
        ctx.session.commit()
    unsettled = ctx.session.scalars(
        select(TrainingJob).where(
            TrainingJob.status.in_(TERMINAL_TRAINING_STATUSES), TrainingJob.settled_at.is_(None)
        ).order_by(TrainingJob.updated_at).limit(settle_batch)  # the longest waiting first
    ).all()
    for job in unsettled:
        try:
            run = ctx.airflow.get_dag_run(ctx.dag_id, run_id(job))
            if run is None:
                job.settled_at, job.log_tail = utcnow(), job.log_tail or ""
                events.job_settled(ctx, job)
            else:
                settle(ctx, job, run, ctx.airflow.list_task_instances(ctx.dag_id, run_id(job)))
            changed += 1
        except AirflowError as exc:
            log.warning("cannot settle job %s: %s", job.id, exc)
            break
        ctx.session.commit()
    ctx.session.commit()  # unconditionally: autoflush leaves `session.dirty` empty
    return changed


def reconcile_trainings(
    session: Session, s3: S3Storage | None, airflow: TrainingAirflowApi, mlflow: MlflowApi | None, settings: Settings
) -> int:
    """`reconcile` on the given session and clients; returns how many jobs changed."""
    return reconcile(TrainingContext(session, s3, airflow, mlflow, settings))
