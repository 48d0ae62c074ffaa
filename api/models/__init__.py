"""ORM models of the service database (the API is its only writer)."""

from api.models.base import Base
from api.models.catalog_model import CatalogModelRow
from api.models.event import EventLevel, EventType, TrainingEvent
from api.models.idempotency import IDEMPOTENCY_WINDOW, IdempotencyKey
from api.models.dataset import Dataset, DatasetStage, DatasetStatus
from api.models.training_job import (
    ACTIVE_TRAINING_STATUSES,
    TERMINAL_TRAINING_STATUSES,
    TrainingJob,
    TrainingStatus,
)
from api.models.user import User
from api.models.webhook import DeliveryStatus, Webhook, WebhookAttempt, WebhookDelivery, WebhookEvent

__all__ = [
    "ACTIVE_TRAINING_STATUSES",
    "TERMINAL_TRAINING_STATUSES",
    "Base",
    "CatalogModelRow",
    "Dataset",
    "DatasetStage",
    "DatasetStatus",
    "DeliveryStatus",
    "EventLevel",
    "EventType",
    "IDEMPOTENCY_WINDOW",
    "IdempotencyKey",
    "TrainingEvent",
    "TrainingJob",
    "TrainingStatus",
    "User",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEvent",
]
