"""Creating and stopping jobs: `start_job` validates a request, records the job and triggers
its `qlora_training` run (one per job, run id `train-{job_id}`); `stop_job` asks Airflow to end
the run (the job then settles `stopped` in `sync`).

A start is crash-safe and idempotent: under the user's row lock it answers a known
`Idempotency-Key` with its first answer, checks the active jobs quota, and commits the job (with
the key) BEFORE it triggers the run. A process that dies between the two leaves a job without a
run, which the reconcile pass triggers (`trigger_pending`); a trigger Airflow refuses undoes the
job (503), and if Airflow did create that run after all (a trigger that timed out at the client),
the reconcile pass ends it (`end_orphan_runs`). Only runs of jobs this process undid are ended
that way: other deployments may share the Airflow (a staging API, a test's own API), and their
runs have no job in this database either."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.clients.airflow import AirflowError, AirflowTimeout, AirflowUnavailable, DagNotFound
from api.clients.s3 import S3Unavailable
from api.models import (
    ACTIVE_TRAINING_STATUSES,
    CatalogModelRow,
    Dataset,
    DatasetStage,
    TrainingJob,
    TrainingStatus,
    User,
)
from api.models.base import new_id, utcnow
from api.schemas.trainings import TrainingRequest, TrainingStartResponse
from api.services import events, idempotency
from api.services.errors import Conflict, InvalidInput, TooManyRequests, Unavailable
from api.services.trainings.context import TrainingContext, run_id
from api.services.trainings.live_state import refresh_live
from api.services.trainings.reads import owned_job
from api.services.trainings.sync import apply_run
from training import job_spec, params
from training import s3 as s3_layout  # the S3 key layout
from training.catalog import load_catalog

log = logging.getLogger(__name__)

#: the `Idempotency-Key` scope of job starts
START_SCOPE = "POST /v1/trainings"


def start_job(ctx: TrainingContext, owner: User, request: TrainingRequest,
              idempotency_key: str | None = None) -> tuple[TrainingStartResponse, bool]:
    """The whole start of a job: answers a known `idempotency_key` with its first answer,
    validates everything (400 with every problem), checks the user's active jobs (429), commits
    the job, then triggers its run. Returns the answer and whether it is a replay. An Airflow
    that refuses the trigger (unreachable, the DAG not loaded) raises `AirflowError` (503) and
    leaves no job behind; one that takes the trigger without answering in time (`AirflowTimeout`)
    leaves the job queued for the reconcile pass to trigger (202)."""
    key = idempotency.check_key(idempotency_key)
    digest = idempotency.body_hash(request.model_dump(mode="json", exclude_unset=True)) if key else ""
    if _active_jobs(ctx, owner) >= ctx.settings.max_active_jobs_per_user:
        # the database may lag behind Airflow: read the user's active jobs once before refusing
        refresh_live(ctx, ctx.session.scalars(select(TrainingJob).where(
            TrainingJob.owner_id == owner.id, TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES))).all())
    idempotency.lock_user(ctx.session, owner)  # until the commit: keys and the quota see every earlier start
    if key and (first := idempotency.replay(ctx.session, owner, START_SCOPE, key, digest)) is not None:
        ctx.session.rollback()
        return TrainingStartResponse.model_validate(first.response_body), True
    job, conf = _new_job(ctx, owner, request)
    active = _active_jobs(ctx, owner)
    if active >= ctx.settings.max_active_jobs_per_user:
        ctx.session.rollback()
        raise TooManyRequests(
            f"You have {active} queued or running training jobs, the most allowed at once "
            f"({ctx.settings.max_active_jobs_per_user}); wait for one to end (or stop one with POST "
            "/v1/trainings/{job_id}/stop), then retry", ctx.settings.active_jobs_retry_after_s)
    answer = TrainingStartResponse(job_id=job.id)
    ctx.session.add(job)
    ctx.session.flush()
    events.job_created(ctx.session, job)
    if key:
        idempotency.remember(ctx.session, owner, START_SCOPE, key, digest, 202, answer.model_dump(mode="json"),
                             job.id)
    try:
        ctx.session.commit()  # the job exists before its run: a crash from here on is the reconcile's to mend
    except IntegrityError:  # the same key committed by a parallel request (SQLite: no row lock)
        ctx.session.rollback()
        if key and (first := idempotency.replay(ctx.session, owner, START_SCOPE, key, digest)) is not None:
            return TrainingStartResponse.model_validate(first.response_body), True
        raise
    try:
        ctx.airflow.trigger_dag_run(ctx.dag_id, run_id(job), conf)
    except AirflowTimeout as exc:
        # Airflow is up but slow (seen under load: triggers answered in 10-130 s): the job stays
        # queued and the reconcile pass triggers its run, or finds it if this trigger went through
        log.warning("job %s: the trigger of its run got no answer in time (%s); the reconcile pass triggers it",
                    job.id, exc)
        return answer, False
    except AirflowError:
        _undo(ctx, job)
        raise
    job.run_triggered_at = utcnow()
    ctx.session.commit()
    return answer, False


def _active_jobs(ctx: TrainingContext, owner: User) -> int:
    return ctx.session.scalar(select(func.count()).select_from(TrainingJob).where(
        TrainingJob.owner_id == owner.id, TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES))) or 0


#: job id -> when this process undid it after a failed trigger: the only runs without a job that
#: `end_orphan_runs` ends (a day later the id is forgotten)
_UNDONE: dict[str, float] = {}
UNDONE_KEPT_S = 86400.0


def _undo(ctx: TrainingContext, job: TrainingJob) -> None:
    """Deletes a job whose trigger Airflow refused (and the key that answered with it). If the
    database fails now, the job stays and the reconcile pass triggers its run later."""
    _UNDONE[job.id] = time.monotonic()
    try:
        ctx.session.rollback()
        idempotency.forget_resource(ctx.session, job.id)
        ctx.session.delete(ctx.session.merge(job))
        ctx.session.commit()
    except Exception:  # noqa: BLE001 - the trigger's error is the one the caller must see
        log.exception("job %s could not be undone after its trigger failed; the reconcile pass will trigger it",
                      job.id)
        ctx.session.rollback()


def _new_job(ctx: TrainingContext, owner: User, request: TrainingRequest) -> tuple[TrainingJob, dict[str, Any]]:
    """The job of a valid request (not added to the session) and its run's conf; 400 with every
    problem otherwise."""
    model = load_catalog().get(request.model_id)
    row = ctx.session.get(CatalogModelRow, request.model_id)
    if model is None or row is None or not row.active:
        raise InvalidInput(f"model_id {request.model_id!r} is not an available model; see GET /v1/models/allowed")
    dataset = ctx.session.get(Dataset, request.dataset_id)
    if dataset is None or dataset.owner_id != owner.id:
        raise InvalidInput(f"dataset_id {request.dataset_id!r}: dataset not found")
    if dataset.stage != DatasetStage.READY:
        why = f" ({dataset.error})" if dataset.error else ""
        raise InvalidInput(
            f"dataset {dataset.id} is not ready (status {dataset.status}, stage {dataset.stage}){why}; "
            "train on a dataset whose status is ready"
        )
    tasks = (dataset.stats or {}).get("tasks")
    problems = job_spec.validate_job_request(
        model, tasks if isinstance(tasks, list) else None, request.training_params, request.output_name
    )
    max_runtime = request.max_runtime_minutes
    if max_runtime is None:
        max_runtime = ctx.settings.max_runtime_minutes_default
    problems += job_spec.max_runtime_problems(max_runtime, ctx.settings.max_runtime_minutes_max)
    if problems:
        raise InvalidInput("; ".join(problems))

    job_id = new_id()
    # what the job really uses: every default filled in (the model's rank range, alpha, targets,
    # frames); the run gets exactly these, and the detail echoes them
    resolved = job_spec.resolve_job_params(model, request.training_params)
    # user: readable in MLflow (experiment qlora/{username})
    conf = job_spec.job_conf(job_id, owner.username, model.id, dataset.id, request.output_name, resolved,
                             max_runtime)
    dag_run_id = job_spec.dag_run_id(job_id)
    job = TrainingJob(
        id=job_id,
        owner_id=owner.id,
        model_id=model.id,
        dataset_id=dataset.id,
        status=TrainingStatus.QUEUED.value,
        request={"model_id": model.id, "dataset_id": dataset.id, "output_name": request.output_name,
                 # as resolved, and the fields the user set (the rest took their defaults)
                 "training_params": resolved.model_dump(),
                 "requested_params": request.training_params.model_dump(exclude_unset=True),
                 "max_runtime_minutes": max_runtime},
        output_name=request.output_name,
        job_metadata=request.metadata,
        airflow_run_id=dag_run_id,
        progress=0.0,
    )
    return job, conf


def job_run_conf(ctx: TrainingContext, job: TrainingJob) -> dict[str, Any]:
    """The conf of the job's run, rebuilt from what the job recorded (the reconcile pass's
    trigger of a job the API committed but never triggered)."""
    request = job.request or {}
    owner = ctx.session.get(User, job.owner_id)
    resolved = params.TrainingParams.model_validate(request.get("training_params") or {})
    return job_spec.job_conf(job.id, owner.username if owner else "", job.model_id, job.dataset_id,
                             job.output_name or request.get("output_name") or "", resolved,
                             request.get("max_runtime_minutes") or ctx.settings.max_runtime_minutes_default)


def trigger_pending(ctx: TrainingContext, limit: int = 20) -> int:
    """Triggers the runs of active jobs committed more than `trigger_grace_s` ago whose run was
    never triggered (the API died between its commit and its trigger); once each (a run id that
    exists already counts as triggered). Stops at the first Airflow failure (no verdict on the
    jobs: the next pass tries again). Returns how many were triggered."""
    cutoff = utcnow() - timedelta(seconds=ctx.settings.trigger_grace_s)
    jobs = ctx.session.scalars(select(TrainingJob).where(
        TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES), TrainingJob.run_triggered_at.is_(None),
        TrainingJob.stop_requested_at.is_(None), TrainingJob.created_at <= cutoff,
    ).order_by(TrainingJob.created_at).limit(limit)).all()
    done = 0
    for job in jobs:
        try:
            created = ctx.airflow.trigger_dag_run(ctx.dag_id, run_id(job), job_run_conf(ctx, job))
        except AirflowError as exc:
            log.warning("cannot trigger the run of job %s yet: %s", job.id, exc)
            break
        job.run_triggered_at = utcnow()
        ctx.session.commit()
        log.info("job %s: %s its run %s, left untriggered by its request", job.id,
                 "triggered" if created else "found", run_id(job))
        done += 1
    return done


def end_orphan_runs(ctx: TrainingContext) -> int:
    """Ends (marks failed) the queued or running `qlora_training` runs of jobs this process undid
    after a trigger Airflow did perform after all (e.g. a timeout), once no such job exists.
    Runs of jobs it does not know are left alone: another deployment sharing the Airflow owns
    them. Raises `AirflowError`."""
    now = time.monotonic()
    for job_id, undone_at in list(_UNDONE.items()):
        if now - undone_at > UNDONE_KEPT_S:
            del _UNDONE[job_id]
    if not _UNDONE:
        return 0
    prefix = job_spec.dag_run_id("")
    runs = [r for r in ctx.airflow.list_active_runs(ctx.dag_id)
            if r.run_id.startswith(prefix) and r.run_id[len(prefix):len(prefix) + 36] in _UNDONE]
    job_ids = {r.run_id: r.run_id[len(prefix):len(prefix) + 36] for r in runs}
    known = set(ctx.session.scalars(select(TrainingJob.id).where(TrainingJob.id.in_(set(job_ids.values())))).all()) \
        if job_ids else set()
    ended = 0
    for run in runs:
        if job_ids[run.run_id] not in known:
            log.warning("ending Airflow run %s: its job %s was undone after a failed trigger", run.run_id,
                        job_ids[run.run_id])
            ctx.airflow.set_dag_run_state(ctx.dag_id, run.run_id, "failed")
            _UNDONE.pop(job_ids[run.run_id], None)
            ended += 1
    return ended


def _stop_unread(ctx: TrainingContext, job: TrainingJob, exc: AirflowUnavailable) -> TrainingJob:
    """A stop while Airflow does not answer (too slow under load: a timeout; or refused,
    unreachable, a 5xx; not a DAG it has not loaded: 503) on reading the run or on marking it
    failed: the request is recorded and left for the train task, which reads it before it starts
    its engine and while the engine trains (`training.pipeline.train_control`): a run that has not trained yet ends without
    training, a training in progress saves its partial adapter, and one that finished first
    completes the job. Nothing is marked failed in Airflow without knowing the run's state."""
    log.warning("job %s: Airflow did not answer (%s); the stop is left to the train task", job.id, exc)
    if job.stop_requested_at is None:
        job.stop_requested_at = utcnow()
        events.stop_requested(ctx.session, job)
        ctx.session.commit()
    _tell_train_task(ctx, job, "and the pipeline service (Airflow) did not answer")
    return job


def _tell_train_task(ctx: TrainingContext, job: TrainingJob, also: str = "") -> None:
    """Writes the stop request the train task polls; a storage outage is a 503 that says the stop
    is recorded and what to retry (asking again repeats the request)."""
    assert ctx.s3 is not None and job.stop_requested_at is not None
    try:
        ctx.s3.put_json(s3_layout.training_stop_key(job.id),
                        {"run_id": run_id(job), "requested_at": job.stop_requested_at.isoformat()})
    except S3Unavailable as exc:
        log.warning("job %s: the stop request cannot be written to S3: %s", job.id, exc)
        raise Unavailable(f"The stop of job {job.id} is recorded, but it cannot reach the training now: the storage "
                          f"service (S3) is unavailable{' ' + also if also else ''}. Retry POST /v1/trainings/"
                          f"{job.id}/stop in a few seconds (asking again repeats the request)", retry_after_s=5) from exc


def stop_job(ctx: TrainingContext, owner: User, job_id: str) -> TrainingJob:
    """Records the request and stops the training, and only it. While the train task runs, the
    request goes to it (`training.s3.training_stop_key`): the task stops its engine (SIGTERM:
    the partial adapter is saved) and fails, unless the training finished first, in which case
    the job completes. Before the training started the run is marked failed (nothing is lost).
    Once the training finished (evaluating, registering) the stop is refused with 409: the job
    ends completed. Asking again while the job is stopping repeats the request; a terminal job
    is a 400."""
    job = owned_job(ctx, owner, job_id)
    tis: dict = {}
    if job.status in ACTIVE_TRAINING_STATUSES:
        try:
            run = ctx.airflow.get_dag_run(ctx.dag_id, run_id(job))
            tis = ctx.airflow.list_task_instances(ctx.dag_id, run_id(job)) if run is not None else {}
        except AirflowUnavailable as exc:  # too slow (a timeout), refused or unreachable
            if ctx.s3 is None or isinstance(exc, DagNotFound):  # the DAG not loaded: 503, retry in a minute
                raise
            return _stop_unread(ctx, job, exc)
        apply_run(ctx, job, run, tis if run is not None else None, utcnow())
    if job.status not in ACTIVE_TRAINING_STATUSES:
        ctx.session.commit()
        raise InvalidInput(f"Job {job.id} is {job.status}: only queued or running jobs can be stopped")
    train = tis.get(job_spec.TRAIN_TASK_ID)
    train_state = ((train.state if train else None) or "").lower()
    if train_state == "success" and job.stop_requested_at is None:
        ctx.session.commit()
        raise Conflict(f"Job {job.id} has finished training and is now {job.stage or 'evaluating'} its adapter: it "
                       "is not stopped (that would throw away a finished training) and ends completed")
    if job.stop_requested_at is None:
        job.stop_requested_at = utcnow()
        events.stop_requested(ctx.session, job)
        ctx.session.commit()  # recorded first: the failed run must read as stopped
    if train_state == "running" and ctx.s3 is not None:
        # the train task stops its own engine; a training that ends first completes the job
        _tell_train_task(ctx, job)
    elif train_state != "success":
        # nothing trained yet (or no way to tell the task): Airflow ends the run, SIGTERM to a task that just started
        try:
            ctx.airflow.set_dag_run_state(ctx.dag_id, run_id(job), "failed")
        except AirflowUnavailable as exc:  # maybe done, maybe not: the train task will not start its engine
            if ctx.s3 is None or isinstance(exc, DagNotFound):
                raise
            return _stop_unread(ctx, job, exc)
    return job
