from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, new_id, utcnow


class TrainingStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


ACTIVE_TRAINING_STATUSES = (TrainingStatus.QUEUED.value, TrainingStatus.RUNNING.value)
TERMINAL_TRAINING_STATUSES = (
    TrainingStatus.COMPLETED.value,
    TrainingStatus.FAILED.value,
    TrainingStatus.STOPPED.value,
)


class TrainingJob(Base):
    """A training job: the request, and the state last read back from Airflow and MLflow.

    Terminal jobs are settled once (status, times, output path, error, metrics cached here);
    live ones are refreshed on reads. `dataset_id` is deliberately not a foreign key: a job's
    history outlives its dataset.
    """

    __tablename__ = "training_jobs"
    __table_args__ = (
        Index("ix_training_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_training_jobs_dataset_status", "dataset_id", "status"),
        Index("ix_training_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    dataset_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(16), default=TrainingStatus.QUEUED.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: the user's own labels (`metadata` of the request: at most 16 string pairs)
    job_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, default=None)
    #: the request as accepted (model_id, dataset_id, training_params, output_name)
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    output_name: Mapped[str | None] = mapped_column(String(64), default=None)
    airflow_run_id: Mapped[str | None] = mapped_column(String(250), default=None)
    #: when Airflow accepted the trigger of the run (None: the job is committed but its run not
    #: yet triggered; the reconcile loop triggers it)
    run_triggered_at: Mapped[datetime | None] = mapped_column(default=None)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64), default=None)
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    output_path: Mapped[str | None] = mapped_column(String(512), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    metrics: Mapped[dict[str, float] | None] = mapped_column(JSON, default=None)
    stop_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    #: the last lines of the training task's log, cached when the job settled (before, the tail last
    #: read by a detail: shown while Airflow does not answer in time)
    log_tail: Mapped[str | None] = mapped_column(Text, default=None)
    #: when the terminal details (error, metrics, output path) were read back and cached
    settled_at: Mapped[datetime | None] = mapped_column(default=None)
    #: the job's earlier Airflow runs, oldest first, when it was resumed (`POST .../resume`):
    #: `{"run_id", "status", "stage", "started_at", "completed_at", "error", "step"}` each; the
    #: current run is `airflow_run_id` (migration 0007)
    runs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    #: the MLflow model version the job registered: `{"name", "version"}` (the register task's)
    registered_model: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
