"""`GET /v1/health` of the real API server against the real PostgreSQL, SeaweedFS, Airflow and
MLflow: every dependency answers, the scheduler's heartbeat is recent."""

from __future__ import annotations

import httpx


def test_health_of_the_real_stack_reports_each_dependency_ok(api_server) -> None:
    resp = httpx.get(f"{api_server.base_url}/v1/health", timeout=15)
    assert resp.status_code == 200, resp.text
    checks = resp.json()["checks"]
    assert {name: check["status"] for name, check in checks.items()} == {
        "database": "ok", "s3": "ok", "airflow": "ok", "airflow_scheduler": "ok", "airflow_dag_processor": "ok",
        "mlflow": "ok"}
    assert checks["airflow_scheduler"]["detail"].startswith("last heartbeat ")
