"""Bodies of `/v1/webhooks`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WebhookEventField = Literal["training.completed", "training.failed", "training.stopped", "dataset.ready",
                            "dataset.error"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"url": "https://example.com/hooks/qlora", "events": ["training.completed", "training.failed"],
         "description": "CI notifications"}]})

    url: str = Field(max_length=2048, description="An http(s) URL on a public address; it receives a signed "
                     "POST per event (Standard Webhooks).")
    events: list[WebhookEventField] = Field(min_length=1, max_length=5, description="The events to receive.")
    description: str = Field(default="", max_length=1000)


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[WebhookEventField]
    description: str
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret (`whsec_...`), shown only in this answer: verify the "
                        "`webhook-signature` header with it (HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` "
                        "keyed by the base64-decoded part after `whsec_`).")


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null when no answer came.")
    error: str | None = Field(description="Why no answer came (timeout, connection refused, address refused).")
    duration_ms: int
    next_retry_at: datetime | None = Field(description="When the next attempt is due; null once delivered or given up.")


class DeliveryOut(BaseModel):
    id: str = Field(description="The `webhook-id` header: the same for every attempt of this message.")
    event: WebhookEventField
    subject_id: str = Field(description="The training job or dataset the event is about.")
    status: Literal["pending", "delivered", "failed"]
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    attempts: list[AttemptOut]
