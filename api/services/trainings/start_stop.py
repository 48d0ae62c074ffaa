"""Creating and stopping jobs: `start_job` validates a request, records the job and triggers
its `qlora_training` run (one per job, run id `train-{job_id}`); `stop_job` asks Airflow to end
the run (the job then settles `stopped` in `sync`)."""

from __future__ import annotations

from api.clients.airflow import AirflowError
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
from api.schemas.trainings import TrainingRequest
from api.services import events
from api.services.errors import InvalidInput
from api.services.trainings.context import TrainingContext, run_id
from api.services.trainings.reads import owned_job
from api.services.trainings.sync import apply_run
from training import job_spec
from training.catalog import load_catalog


def start_job(ctx: TrainingContext, owner: User, request: TrainingRequest) -> TrainingJob:
    """The whole start of a job: validates everything (400 with every problem), builds the
    run's conf, creates the job and triggers its run. An unreachable Airflow raises
    `AirflowError` (503) and leaves no job behind."""
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
    if problems:
        raise InvalidInput("; ".join(problems))

    job_id = new_id()
    # what the job really uses: every default filled in (the model's rank range, alpha, targets,
    # frames); the run gets exactly these, and the detail echoes them
    resolved = job_spec.resolve_job_params(model, request.training_params)
    # user: readable in MLflow (experiment qlora/{username})
    conf = job_spec.job_conf(job_id, owner.username, model.id, dataset.id, request.output_name, resolved)
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
                 "requested_params": request.training_params.model_dump(exclude_unset=True)},
        output_name=request.output_name,
        job_metadata=request.metadata,
        airflow_run_id=dag_run_id,
        progress=0.0,
    )
    ctx.session.add(job)
    ctx.session.flush()
    events.job_created(ctx.session, job)
    try:
        ctx.airflow.trigger_dag_run(ctx.dag_id, dag_run_id, conf)
    except AirflowError:
        ctx.session.rollback()  # no job without a run
        raise
    ctx.session.commit()
    return job


def stop_job(ctx: TrainingContext, owner: User, job_id: str) -> TrainingJob:
    """Records the request and marks the run failed (Airflow then kills the train task:
    SIGTERM, the engine saves its partial adapter). Asking again while the job is stopping
    repeats the (idempotent) request; a terminal job is a 400."""
    job = owned_job(ctx, owner, job_id)
    if job.status in ACTIVE_TRAINING_STATUSES:
        run = ctx.airflow.get_dag_run(ctx.dag_id, run_id(job))
        apply_run(ctx, job, run, None, utcnow())
    if job.status not in ACTIVE_TRAINING_STATUSES:
        ctx.session.commit()
        raise InvalidInput(f"Job {job.id} is {job.status}: only queued or running jobs can be stopped")
    if job.stop_requested_at is None:
        job.stop_requested_at = utcnow()
        events.stop_requested(ctx.session, job)
        ctx.session.commit()  # recorded first: the failed run must read as stopped
    # Airflow kills the running task (SIGTERM: the engine saves its partial adapter)
    ctx.airflow.set_dag_run_state(ctx.dag_id, run_id(job), "failed")
    return job
