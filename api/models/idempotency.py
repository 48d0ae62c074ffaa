"""Idempotency keys: the first answer to a request sent with an `Idempotency-Key` header, kept
for `IDEMPOTENCY_WINDOW` so that a retry with the same key and body gets it again (the same
`job_id`) instead of doing the work twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, utcnow

#: a key is remembered this long; after it, the same key starts a new request
IDEMPOTENCY_WINDOW = timedelta(hours=24)


class IdempotencyKey(Base):
    """One user's key on one operation (`scope`, e.g. `POST /v1/trainings`): a hash of the
    request body, and the answer given to it (status and body) with the resource it created."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: SHA-256 of the canonical JSON of the request body
    request_hash: Mapped[str] = mapped_column(String(64))
    #: the job (or other resource) the first request created
    resource_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    response_status: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
