"""The events of a training job (`GET /v1/trainings/{job_id}/events`): written where the job's
state changes are applied (`api.services.events`), so they exist whether or not a client watches."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, utcnow

#: an auto-incremented 64-bit id on PostgreSQL, SQLite's ROWID alias there
EVENT_ID = BigInteger().with_variant(Integer, "sqlite")


class EventType(enum.StrEnum):
    STATUS = "status"
    EPOCH = "epoch"
    CHECKPOINT = "checkpoint"
    STOP_REQUESTED = "stop_requested"
    WARNING = "warning"
    ERROR = "error"


class EventLevel(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class TrainingEvent(Base):
    """One event of a job. `id` grows with every event; the events of one job are written one
    transaction after the other (the job's row is locked first), so `after=<id>` is a stable cursor.
    `key` names what happened (e.g. `status:queued>running`, `epoch:3`): the same fact observed by
    two readers at once is recorded once."""

    __tablename__ = "training_events"
    __table_args__ = (
        UniqueConstraint("job_id", "key", name="uq_training_events_job_key"),
        Index("ix_training_events_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16), default=EventLevel.INFO.value)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    key: Mapped[str] = mapped_column(String(200))
