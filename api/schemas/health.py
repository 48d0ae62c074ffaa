"""`GET /v1/health`: the service and each dependency (`api/services/health.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class HealthCheck(BaseModel):
    status: Literal["ok", "down", "not_configured"]
    latency_ms: float = Field(description="How long the check took.")
    detail: str | None = Field(default=None, description="Why it is down (or, for the scheduler, its last heartbeat).")


class HealthReport(BaseModel):
    status: Literal["ok", "unhealthy"]
    checks: dict[str, HealthCheck] = Field(
        description="`database`, `s3`, `airflow` (API and metadata database), `airflow_scheduler` (heartbeat), "
        "`airflow_dag_processor`, `mlflow`.")
    down: list[str] | None = Field(default=None, description="The checks that are down (503 only).")
    detail: str | None = Field(default=None, description="What is down and why (503 only).")


HEALTH_OK_EXAMPLE = {"status": "ok", "checks": {
    "database": {"status": "ok", "latency_ms": 1.2}, "s3": {"status": "ok", "latency_ms": 4.8},
    "airflow": {"status": "ok", "latency_ms": 12.5},
    "airflow_scheduler": {"status": "ok", "latency_ms": 0.0,
                          "detail": "last heartbeat 2026-11-25T10:00:03.5+00:00 (2 s ago)"},
    "airflow_dag_processor": {"status": "ok", "latency_ms": 0.0,
                              "detail": "last heartbeat 2026-11-25T10:00:01.9+00:00 (4 s ago)"},
    "mlflow": {"status": "ok", "latency_ms": 3.1}}}
HEALTH_DOWN_EXAMPLE = {
    "status": "unhealthy", "down": ["airflow_scheduler"],
    "detail": "Unhealthy: airflow_scheduler (the scheduler is unhealthy: last heartbeat 2026-11-25T09:58:03.5+00:00 "
              "(122 s ago); queued and running jobs do not advance)",
    "checks": {**HEALTH_OK_EXAMPLE["checks"],
               "airflow_scheduler": {"status": "down", "latency_ms": 0.0,
                                     "detail": "the scheduler is unhealthy: last heartbeat "
                                               "2026-11-25T09:58:03.5+00:00 (122 s ago); queued and running jobs "
                                               "do not advance"}}}
