"""Bodies of a job's events, metric history and (text) logs under `/v1/trainings/{job_id}`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainingEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Grows with every event; pass the last one you saw as `after`.")
    created_at: datetime
    type: Literal["status", "epoch", "checkpoint", "stop_requested", "warning", "error"]
    level: Literal["info", "warning", "error"]
    message: str
    data: dict[str, Any] = Field(description="status: from_status, to_status, from_stage, to_stage; epoch: epoch, "
                                 "step, metrics; checkpoint: step, epoch, name, location.")


class TrainingEventPage(BaseModel):
    data: list[TrainingEventOut]
    has_more: bool


class MetricPointOut(BaseModel):
    step: int
    value: float
    timestamp: datetime


#: `GET /v1/trainings/{job_id}/metrics`: per key, its points after `after_step`, by step
MetricHistory = dict[str, list[MetricPointOut]]
