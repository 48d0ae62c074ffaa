"""`POST /v1/trainings/{id}/resume`: a stopped or failed job continues from its last uploaded
checkpoint to its planned end, through a new `qlora_training` run of the same job.

Semantics: the job keeps its id, parameters, MLflow run and checkpoints. The run that ended is
appended to the job's `runs` (its id, status, stage, times, error and the step resumed from);
a new run `train-{job_id}-resume-N` is triggered with the job's conf (the same resolved
parameters), whose `train` task restores the newest uploaded checkpoint and runs the engine
with `--resume` (`training.pipeline.resume`): the optimizer, scheduler, random states and step
continue, the MLflow run's metrics continue from that step. The job goes back to `queued`
(then `running`, ...), its stop request, error, end time, cached log tail and partial adapter
path are cleared, and a `status` event records the resumption. Refused with 400 (and a
`detail`) for a job that is queued, running, completed, has no intact uploaded checkpoint, or
whose dataset or model is gone.
"""

from __future__ import annotations

import logging
from typing import Any

from api.clients.airflow import AirflowError
from api.models import ACTIVE_TRAINING_STATUSES, CatalogModelRow, Dataset, DatasetStage, TrainingJob, TrainingStatus, User
from api.models.event import EventType
from api.services import events
from api.services.errors import InvalidInput
from api.services.trainings import results, sync
from api.services.trainings.context import TrainingContext, run_id
from api.services.trainings.reads import owned_job
from api.services.trainings.start_stop import job_run_conf
from training import job_spec

log = logging.getLogger(__name__)

RESUMABLE = (TrainingStatus.STOPPED.value, TrainingStatus.FAILED.value)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def resume_job(ctx: TrainingContext, owner: User, job_id: str) -> tuple[TrainingJob, int]:
    """Triggers the job's next run from its last uploaded checkpoint; returns the job (queued)
    and the step it resumes from. `NotFound` for another user's job, `InvalidInput` (400) saying why
    when it cannot be resumed, `AirflowError` (503) when Airflow cannot be reached (nothing
    changed then)."""
    job = owned_job(ctx, owner, job_id)
    if job.status in ACTIVE_TRAINING_STATUSES or job.settled_at is None:
        try:
            sync.refresh_one(ctx, job)  # it may have ended (or finished stopping) since last read
        except AirflowError as exc:
            log.warning("cannot read job %s from Airflow: %s", job.id, exc)
        ctx.session.commit()
    if job.status not in RESUMABLE:
        what = ("it is still " + job.status + "; stop it first, or wait for it to end") \
            if job.status in ACTIVE_TRAINING_STATUSES else "it completed: there is nothing left to train"
        raise InvalidInput(f"Job {job.id} cannot be resumed: {what}. Only stopped or failed jobs with an uploaded "
                       "checkpoint can be resumed")
    checkpoints = results.list_checkpoints(ctx, job)
    if not checkpoints:
        raise InvalidInput(f"Job {job.id} cannot be resumed: it has no uploaded checkpoint (it ended before its first "
                       "one); start a new job instead")
    dataset = ctx.session.get(Dataset, job.dataset_id)
    if dataset is None or dataset.stage != DatasetStage.READY:
        raise InvalidInput(f"Job {job.id} cannot be resumed: its dataset {job.dataset_id} is no longer available")
    row = ctx.session.get(CatalogModelRow, job.model_id)
    if row is None or not row.active:
        raise InvalidInput(f"Job {job.id} cannot be resumed: its model {job.model_id} is no longer available")

    history = list(job.runs or [])
    step = checkpoints[-1].step
    new_run = job_spec.dag_run_id(job.id, len(history) + 1)
    conf = job_run_conf(ctx, job)  # the job's conf as its first run got it (the same resolved parameters)
    created = ctx.airflow.trigger_dag_run(ctx.dag_id, new_run, conf)  # AirflowError: nothing changed
    if not created:
        log.info("job %s: run %s already existed (a repeated resume request)", job.id, new_run)

    before_status, before_stage = job.status, job.stage
    history.append({"run_id": run_id(job), "status": job.status, "stage": job.stage,
                    "started_at": _iso(job.started_at), "completed_at": _iso(job.completed_at),
                    "error": job.error, "resumed_from_step": step})
    job.runs = history
    job.airflow_run_id = new_run
    job.status, job.stage = TrainingStatus.QUEUED.value, None
    job.completed_at = job.stop_requested_at = job.settled_at = None
    job.error = job.log_tail = job.output_path = None
    job.registered_model = None
    events.record(ctx.session, job.id, EventType.STATUS,
                  f"Resumed from the checkpoint at step {step} (epoch {checkpoints[-1].epoch}): status "
                  f"{before_status} -> queued; Airflow run {new_run}",
                  key=f"status:resumed:{new_run}",
                  data={"from_status": before_status, "to_status": job.status, "from_stage": before_stage,
                        "to_stage": None, "resumed_from_step": step, "airflow_run_id": new_run})
    ctx.session.commit()
    return job, step
