"""What every training-job operation works with: `TrainingContext` (one request's or one
reconcile pass's session, the clients, the settings, the shared live state), and the two facts
every module asks of a job: its Airflow run id, and whether it is settled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from api.clients.airflow import TrainingAirflowApi
from api.clients.mlflow import MlflowApi
from api.clients.s3 import S3Storage
from api.core.config import Settings
from api.models import TERMINAL_TRAINING_STATUSES, TrainingJob
from training import job_spec

if TYPE_CHECKING:
    from api.services.trainings.live_state import LiveState


@dataclass(frozen=True)
class TrainingContext:
    """One request's (or one reconcile pass's) view of the training jobs. `mlflow` is None
    without a tracking server, `s3` None where no partial adapter is looked for; without `live`
    (the process-wide caches of the list path) every list reads Airflow and MLflow itself."""

    session: Session
    s3: S3Storage | None
    airflow: TrainingAirflowApi
    mlflow: MlflowApi | None
    settings: Settings
    live: LiveState | None = None

    @property
    def dag_id(self) -> str:
        return self.settings.training_dag_id


def run_id(job: TrainingJob) -> str:
    """The id of the job's `qlora_training` run."""
    return job.airflow_run_id or job_spec.dag_run_id(job.id)


def is_settled(job: TrainingJob) -> bool:
    """Terminal with every detail cached: nothing about it is read from outside again."""
    return job.status in TERMINAL_TRAINING_STATUSES and job.settled_at is not None and job.log_tail is not None
