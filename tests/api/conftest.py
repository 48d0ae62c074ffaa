"""Fixtures of the API tests: the app on the session's REAL PostgreSQL and SeaweedFS.

Only Airflow is replaced, by `FakeAirflow` (records triggers, returns scripted run states);
the end-to-end tests run the real one."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.clients.airflow import AirflowUnavailable, DagRun
from api.core.config import Settings
from api.deps import get_airflow
from api.main import create_app
from devstack.seaweedfs import S3Settings


class FakeAirflow:
    """Airflow as the API sees it: trigger, read states; `down = True` makes every call fail."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, dict[str, Any]]] = []
        self.states: dict[str, str] = {}
        self.list_calls = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise AirflowUnavailable("connection refused (fake)")

    def trigger_dag_run(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool:
        self._check()
        self.triggers.append((dag_id, run_id, conf))
        created = run_id not in self.states
        self.states.setdefault(run_id, "queued")
        return created

    def get_dag_run(self, dag_id: str, run_id: str) -> DagRun | None:
        self._check()
        state = self.states.get(run_id)
        return DagRun(dag_id, run_id, state) if state else None

    def list_dag_runs(self, dag_id: str, run_ids: list[str]) -> dict[str, DagRun]:
        self._check()
        self.list_calls += 1
        return {r: DagRun(dag_id, r, self.states[r]) for r in run_ids if r in self.states}

    def list_active_runs(self, dag_id: str, limit: int = 500) -> list[DagRun]:
        self._check()
        return [DagRun(dag_id, r, s) for r, s in self.states.items() if s in ("queued", "running")][:limit]


def make_settings(postgres_url: str, s3: S3Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=postgres_url,
        s3_bucket=s3.bucket,
        s3_endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        aws_region=s3.region,
        airflow_url="http://127.0.0.1:9",  # never reached: the fake replaces the client
        reconcile_interval_s=0,
        presigned_url_expiry_s=600,
        upload_expiry_s=600,
        max_upload_bytes=64 * 1024,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(postgres_url: str, s3: S3Settings) -> Settings:
    return make_settings(postgres_url, s3)


@pytest.fixture
def airflow() -> FakeAirflow:
    return FakeAirflow()


@pytest.fixture
def client(settings: Settings, airflow: FakeAirflow) -> Iterator[TestClient]:
    app = create_app(settings)
    app.dependency_overrides[get_airflow] = lambda: airflow
    with TestClient(app) as test_client:
        yield test_client


def new_username() -> str:
    return f"user_{uuid.uuid4().hex[:10]}"


def signup_and_login(client: TestClient, password: str = "s3cret-password") -> dict[str, str]:
    username = new_username()
    resp = client.post(
        "/v1/auth/signup", json={"username": username, "email": f"{username}@example.com", "password": password}
    )
    assert resp.status_code == 201, resp.text
    resp = client.post("/v1/auth/login", json={"username": username, "password": password})
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


@pytest.fixture
def auth(client: TestClient) -> dict[str, str]:
    """Headers of a freshly signed-up user."""
    return signup_and_login(client)


@pytest.fixture
def other_auth(client: TestClient) -> dict[str, str]:
    return signup_and_login(client)


@pytest.fixture
def initiate(client: TestClient, auth: dict[str, str]) -> Callable[..., dict[str, Any]]:
    def _initiate(file_name: str = "clips.zip", headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        body = {"file_name": file_name, "file_type": "application/zip", "dataset_name": "Squares",
                "dataset_description": "moving squares", **fields}
        resp = client.post("/v1/datasets/upload-initiate", json=body, headers=headers or auth)
        assert resp.status_code == 200, resp.text
        return resp.json()

    return _initiate
