"""The steps of a user's journey through the API, shared by the end-to-end tests: sign up and
log in, upload a generated dataset until it is ready, start a training job, watch it; and an
API process of a test's own, which the test may kill and restart (`own_api`, `sigkill`)."""

from __future__ import annotations

import secrets
import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from devstack.airflow import Airflow
from devstack.api_server import APIServer
from devstack.ports import free_ports
from devstack.seaweedfs import S3Settings
from training.data.synthetic import make_dataset, zip_folder

TERMINAL = {"completed", "failed", "stopped"}


#: the password of every user `login` signs up (also their MLflow password)
PASSWORD = "correct horse battery"


def login(api: httpx.Client) -> str:
    """Signs up a new user and puts its bearer token on `api`; returns the username."""
    user = f"e2e_{uuid.uuid4().hex[:8]}"
    password = PASSWORD
    assert api.post("/auth/signup", json={"username": user, "email": f"{user}@example.com",
                                          "password": password}).status_code == 201
    token = api.post("/auth/login", json={"username": user, "password": password}).json()["access_token"]
    api.headers["Authorization"] = f"Bearer {token}"
    return user


def ready_dataset(api: httpx.Client, tmp: Path, clips: int = 12) -> str:
    """Uploads generated clips through a pre-signed URL; returns the id once it is `ready`."""
    folder = make_dataset(tmp / "data" / "squares", clips)
    archive = zip_folder(tmp / "data", tmp / "squares.zip")
    init = api.post("/datasets/upload-initiate", json={"file_name": "squares.zip", "file_type": "application/zip",
                                                       "dataset_name": "squares"}).json()
    assert httpx.put(init["upload_url"], content=archive.read_bytes(), timeout=30).status_code == 200
    assert api.post("/datasets/upload-complete", json={"dataset_id": init["dataset_id"],
                                                       "s3_key": init["s3_key"]}).status_code == 200
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = api.get(f"/datasets/{init['dataset_id']}").json()
        if got["status"] != "processing":
            assert got["status"] == "ready", got
            return init["dataset_id"]
        time.sleep(1)
    raise AssertionError(f"dataset never ready ({folder})")


def start_job(api: httpx.Client, dataset_id: str, model_id: str, name: str, **params) -> str:
    resp = api.post("/trainings", json={"model_id": model_id, "dataset_id": dataset_id, "output_name": name,
                                        "training_params": {"batch_size": 2, "lora_rank": 4, **params}})
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"
    return resp.json()["job_id"]


def watch(api: httpx.Client, job_id: str, until, timeout_s: float = 240) -> tuple[dict, list[dict]]:
    """Polls the job until `until(job)`; returns the last state and every state seen."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = api.get(f"/trainings/{job_id}")
        assert got.status_code == 200, got.text
        seen.append(got.json())
        if until(seen[-1]):
            return seen[-1], seen
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached the expected state: {seen[-1] if seen else None}")


@contextmanager
def own_api(folder: Path, *, database_url: str, s3: S3Settings, airflow: Airflow, mlflow_uri: str,
            airflow_url: str | None = None, settings: Mapping[str, str] = ()) -> Iterator[APIServer]:
    """`uvicorn api.main:app` of one test (not the session's `api_server`, whose process other
    tests use): on `database_url`, the given S3, Airflow (reached at `airflow_url`, e.g. through
    a proxy; default its own URL) and MLflow, a JWT secret of its own, plus `settings`
    (QLORA_* overrides such as a faster reconcile pass). Stopped at the end."""
    env = {**s3.env(), "MLFLOW_TRACKING_URI": mlflow_uri, "QLORA_ENV": "development",
           "QLORA_DATABASE_URL": database_url, "QLORA_JWT_SECRET": secrets.token_urlsafe(48),
           "QLORA_AIRFLOW_URL": airflow_url or airflow.url, "QLORA_AIRFLOW_USERNAME": airflow.username,
           "QLORA_AIRFLOW_PASSWORD": airflow.password, **dict(settings)}
    server = APIServer(folder, free_ports(1)[0], env)
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def sigkill(server) -> None:
    """SIGKILLs a devstack server's (or `Process`'s) process group: no shutdown of any kind, as
    a crash or an OOM kill; `start()` starts it again."""
    process = getattr(server, "process", server)
    stop_signal, process.stop_signal = process.stop_signal, signal.SIGKILL
    try:
        process.stop()
    finally:
        process.stop_signal = stop_signal
