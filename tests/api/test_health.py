"""`GET /v1/health` tells the truth: each dependency checked now, 503 naming what is down.

Here on the real PostgreSQL and SeaweedFS with Airflow unreachable (the settings point at a
closed port) and Airflow's health report served by a stand-in; the real Airflow, MLflow and the
whole stack are checked in tests/e2e/test_health_stack.py and tests/devstack/test_stack_cli.py
(a killed scheduler, then `python -m devstack up`)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from api.deps import get_airflow
from api.main import create_app
from tests.api.conftest import make_settings


def test_airflow_unreachable_is_503_naming_it(client: TestClient) -> None:
    resp = client.get("/v1/health")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unhealthy"
    assert body["down"] == ["airflow", "airflow_scheduler"]
    assert body["detail"].startswith("Unhealthy: airflow (Airflow's health report cannot be read: ConnectError")
    assert body["checks"]["database"]["status"] == "ok" and body["checks"]["s3"]["status"] == "ok"
    assert body["checks"]["mlflow"]["status"] == "not_configured"
    assert resp.headers["Retry-After"] == "30"
    # the liveness probe only says the process answers
    assert client.get("/v1/health/live").json() == {"status": "ok"}


class _FakeAirflowHealth(BaseHTTPRequestHandler):
    report: dict = {}

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps(self.report).encode() if self.path == "/api/v2/monitor/health" else b"{}"
        self.send_response(200 if self.path == "/api/v2/monitor/health" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def airflow_health():
    """A stand-in for Airflow's `/api/v2/monitor/health` (the real one: tests/devstack)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAirflowHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _report(scheduler: str, beat_s_ago: float) -> dict:
    beat = (datetime.now(UTC) - timedelta(seconds=beat_s_ago)).isoformat()
    return {"metadatabase": {"status": "healthy"},
            "scheduler": {"status": scheduler, "latest_scheduler_heartbeat": beat},
            "triggerer": {"status": None, "latest_triggerer_heartbeat": None},
            "dag_processor": {"status": "healthy", "latest_dag_processor_heartbeat": beat}}


def test_a_stale_scheduler_heartbeat_is_503_and_a_fresh_one_200(postgres_url, s3, airflow, airflow_health) -> None:
    url = f"http://127.0.0.1:{airflow_health.server_address[1]}"
    app = create_app(make_settings(postgres_url, s3, airflow_url=url))
    app.dependency_overrides[get_airflow] = lambda: airflow
    with TestClient(app) as client:
        _FakeAirflowHealth.report = _report("unhealthy", 95)
        resp = client.get("/v1/health")
        assert resp.status_code == 503
        assert resp.json()["down"] == ["airflow_scheduler"]
        assert "the scheduler is unhealthy: last heartbeat " in resp.json()["detail"]
        assert "(95 s ago); queued and running jobs do not advance" in resp.json()["detail"]

        _FakeAirflowHealth.report = _report("healthy", 2)
        resp = client.get("/v1/health")
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "ok"
        assert set(resp.json()["checks"]) == {"database", "s3", "airflow", "airflow_scheduler",
                                              "airflow_dag_processor", "mlflow"}
