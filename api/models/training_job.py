from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, new_id, utcnow


class TrainingStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


ACTIVE_TRAINING_STATUSES = (TrainingStatus.QUEUED.value, TrainingStatus.RUNNING.value)


class TrainingJob(Base):
    """Minimal training job row; the trainings API extends it with its own migration.

    `dataset_id` is deliberately not a foreign key: a job's history outlives its dataset.
    """

    __tablename__ = "training_jobs"
    __table_args__ = (
        Index("ix_training_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_training_jobs_dataset_status", "dataset_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(ForeignKey("base_models.id"))
    dataset_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(16), default=TrainingStatus.QUEUED.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
