from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, new_id, utcnow


class DatasetStatus(enum.StrEnum):
    """The spec's coarse status."""

    READY = "ready"
    PROCESSING = "processing"
    ERROR = "error"


class DatasetStage(enum.StrEnum):
    """Where a dataset is in its lifecycle (finer than `status`)."""

    AWAITING_UPLOAD = "awaiting_upload"
    VALIDATING = "validating"
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def status(self) -> DatasetStatus:
        if self is DatasetStage.READY:
            return DatasetStatus.READY
        if self in (DatasetStage.FAILED, DatasetStage.EXPIRED):
            return DatasetStatus.ERROR
        return DatasetStatus.PROCESSING


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_owner_created", "owner_id", "created_at"),
        Index("ix_datasets_stage", "stage"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    file_name: Mapped[str] = mapped_column(String(255))
    s3_key: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default=DatasetStatus.PROCESSING.value)
    stage: Mapped[str] = mapped_column(String(32), default=DatasetStage.AWAITING_UPLOAD.value)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    upload_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: the size the client declared at initiation (bound into the pre-signed PUT / each part URL)
    declared_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: a multipart upload's part size (every part but the last; each part URL binds its size)
    part_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: the object's ETag at upload-complete: the validation run processes exactly this object
    upload_etag: Mapped[str | None] = mapped_column(String(128), default=None)
    file_count: Mapped[int] = mapped_column(default=0)
    total_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    airflow_run_id: Mapped[str | None] = mapped_column(String(250), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    upload_completed_at: Mapped[datetime | None] = mapped_column(default=None)

    def set_stage(self, stage: DatasetStage, error: str | None = None) -> None:
        self.stage = stage.value
        self.status = stage.status.value
        self.error = error
