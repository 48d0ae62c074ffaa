"""Webhook endpoints of users and their outbox: one `WebhookDelivery` per (endpoint, event),
written in the transaction that changes the job or dataset, sent by the API's background sender
(`api.services.webhooks.outbox`), each try kept as a `WebhookAttempt`."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, new_id, utcnow


class WebhookEvent(enum.StrEnum):
    TRAINING_COMPLETED = "training.completed"
    TRAINING_FAILED = "training.failed"
    TRAINING_STOPPED = "training.stopped"
    DATASET_READY = "dataset.ready"
    DATASET_ERROR = "dataset.error"


class DeliveryStatus(enum.StrEnum):
    #: waiting for its next attempt (`next_attempt_at`)
    PENDING = "pending"
    #: the receiver answered 2xx
    DELIVERED = "delivered"
    #: every attempt of the retry window failed (or the endpoint was deleted)
    FAILED = "failed"


class Webhook(Base):
    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    #: the `whsec_<base64>` signing secret encrypted (`api.services.webhooks.sealing`): shown once
    #: at creation, decrypted only to sign deliveries
    secret: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One message to one endpoint (the outbox row). `id` is the `webhook-id` header: the same
    for every attempt, so receivers can drop duplicates (delivery is at least once)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    #: the job or dataset the event is about
    subject_id: Mapped[str] = mapped_column(String(36))
    #: the exact JSON body sent (frozen at the state change: every attempt signs the same bytes)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    #: when the next attempt is due after this one (None: delivered or given up)
    next_retry_at: Mapped[datetime | None] = mapped_column(default=None)
