"""`/v1/trainings`: start QLoRA jobs, watch them, stop them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import TypeAdapter

from api.clients.mlflow import MlflowApi
from api.deps import AirflowDep, CurrentUser, PAGED_LIST_ROUTE, PageDep, S3Dep, SessionDep, SettingsDep
from api.core.config import Settings
from api.models import TrainingJob
from api.schemas.common import ErrorResponse
from api.schemas.trainings import (
    StopResponse,
    TrainingDetail,
    TrainingRequest,
    TrainingStartResponse,
    TrainingSummary,
)
from api.services.trainings import LiveState, TrainingService
from training import job_spec

router = APIRouter(prefix="/trainings", tags=["trainings"], responses={401: {"model": ErrorResponse}})

_UNAVAILABLE = {503: {"model": ErrorResponse, "description": "Airflow cannot be reached; retry later"}}
_NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such job of yours"}}
_SUMMARIES = TypeAdapter(list[TrainingSummary])


def get_mlflow(request: Request) -> MlflowApi | None:
    """The MLflow reader the app made at start-up (None without a tracking server)."""
    return request.app.state.mlflow


def get_live_state(request: Request) -> LiveState:
    """The process-wide caches of the live job state read on the list path."""
    return request.app.state.training_live


def get_service(
    session: SessionDep,
    s3: S3Dep,
    airflow: AirflowDep,
    settings: SettingsDep,
    mlflow: Annotated[MlflowApi | None, Depends(get_mlflow)],
    live: Annotated[LiveState, Depends(get_live_state)],
) -> TrainingService:
    return TrainingService(session, s3, airflow, mlflow, settings, live)  # type: ignore[arg-type]


ServiceDep = Annotated[TrainingService, Depends(get_service)]


def summary_fields(job: TrainingJob) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "model_id": job.model_id,
        "dataset_id": job.dataset_id,
        "output_name": job.output_name,
        "status": job.status,
        "stage": job.stage,
        "progress": min(max(job.progress or 0.0, 0.0), 1.0),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "output_path": job.output_path,
    }


def links(job: TrainingJob, settings: Settings) -> dict[str, str | None]:
    mlflow_ui = settings.mlflow_ui_url or (
        settings.mlflow_tracking_uri if (settings.mlflow_tracking_uri or "").startswith("http") else None
    )
    airflow_ui = (settings.airflow_ui_url or settings.airflow_url).rstrip("/")
    run_id = job.airflow_run_id or job_spec.dag_run_id(job.id)
    return {
        "mlflow_run_url": job_spec.mlflow_run_ui_url(mlflow_ui, job.mlflow_experiment_id, job.mlflow_run_id)
        if mlflow_ui and job.mlflow_run_id and job.mlflow_experiment_id
        else None,
        "airflow_run_url": f"{airflow_ui}/dags/{settings.training_dag_id}/runs/{run_id}",
    }


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainingStartResponse,
    responses={400: {"model": ErrorResponse, "description": "Invalid parameters or model/dataset not found"},
               **_UNAVAILABLE},
    openapi_extra={"x-validation-status": 400},
    summary="Start a QLoRA fine-tuning job",
    description="Validates everything before any compute is spent (model, your ready dataset and its fit to the "
    "model type, parameter bounds, LoRA rank in the model's range, target modules, output name), then runs the "
    "`qlora_training` Airflow DAG (run id `train-{job_id}`).",
)
def start_training(body: TrainingRequest, user: CurrentUser, service: ServiceDep) -> TrainingStartResponse:
    job = service.start(user, body)
    return TrainingStartResponse(job_id=job.id)


@router.get(
    "",
    response_model=list[TrainingSummary],
    **PAGED_LIST_ROUTE,
    summary="Your training jobs, newest first",
    description="All your jobs, newest first; `limit` and `offset` return one page of them instead. The state of "
    "unfinished jobs is at most a few seconds old (read from Airflow and MLflow in bulk, shared by all requests).",
)
def list_trainings(user: CurrentUser, service: ServiceDep, page: PageDep) -> Response:
    items = [
        {
            "job_id": row["id"],
            **{k: row[k] for k in ("model_id", "dataset_id", "output_name", "status", "stage", "output_path",
                                   "created_at", "started_at", "completed_at")},
            "progress": min(max(row["progress"] or 0.0, 0.0), 1.0),
        }
        for row in service.list(user, page.limit, page.offset)
    ]
    # serialized once here (validated against the schema) rather than twice by FastAPI
    return Response(_SUMMARIES.dump_json(_SUMMARIES.validate_python(items)), media_type="application/json")


@router.get(
    "/{job_id}",
    response_model=TrainingDetail,
    responses=_NOT_FOUND,
    summary="Status, progress, metrics and recent logs of a job",
)
def get_training(job_id: str, user: CurrentUser, service: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    job = service.owned(user, job_id)
    extras = service.detail(job)
    return {
        **summary_fields(job),
        **extras,
        **links(job, settings),
        "training_params": (job.request or {}).get("training_params") or {},
        "metrics": job.metrics or {},
        "error": job.error,
        "stop_requested": job.stop_requested_at is not None,
        "mlflow_run_id": job.mlflow_run_id,
        "updated_at": job.updated_at,
    }


@router.post(
    "/{job_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StopResponse,
    responses={400: {"model": ErrorResponse, "description": "The job is not queued or running"},
               **_NOT_FOUND, **_UNAVAILABLE},
    summary="Stop a queued or running job",
    description="Marks the Airflow run failed: the training gets SIGTERM, saves its partial adapter and exits; "
    "the job ends `stopped` within seconds.",
)
def stop_training(job_id: str, user: CurrentUser, service: ServiceDep) -> StopResponse:
    job = service.stop(user, job_id)
    return StopResponse(message=f"Stop request received for {job.id}")
