"""What following a job costs the API, on PostgreSQL (a temp server) with Airflow faked in
process (so the figures are the database work, the part the events and the outbox add):

1. `POST /v1/trainings` with the `status` event written in the job's transaction, beside the
   same POST with the event write switched off (interleaved rounds);
2. settling completed jobs in a reconcile pass (their events: last epochs, status, ...) for a user
   with one webhook subscribed (one outbox row per job, the detail body serialized) beside a user
   with none.

    python -m bench.follow_job [--starts 200] [--settles 100]

The delivery delay after the terminal state is measured on the real stack by
tests/e2e/test_follow_job.py (it prints it). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.clients.airflow import DagRun, TaskInstance
from api.core.config import Settings
from api.deps import get_airflow, get_mlflow
from api.main import create_app, reconcile_once
from api.models import Dataset
from api.models.base import new_id
from api.services import events
from devstack.ports import free_ports
from devstack.postgres import Postgres
from training import job_spec
from training import s3 as s3_layout  # the S3 key layout

MODEL = "flamingo-tiny-classification"


class NoS3:
    def ensure_bucket(self) -> None:
        pass

    def head(self, key: str) -> None:
        return None

    def get_json(self, key: str) -> None:
        return None


class FastAirflow:
    """Answers at once: runs succeed when told, every task succeeded."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}

    def trigger_dag_run(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> bool:
        self.states.setdefault(run_id, "queued")
        return True

    def get_dag_run(self, dag_id: str, run_id: str) -> DagRun | None:
        return DagRun(dag_id, run_id, self.states[run_id]) if run_id in self.states else None

    def list_dag_runs(self, dag_id: str, run_ids: list[str]) -> dict[str, DagRun]:
        return {r: DagRun(dag_id, r, self.states[r]) for r in run_ids if r in self.states}

    def list_task_instances(self, dag_id: str, run_id: str) -> dict[str, TaskInstance]:
        return {t: TaskInstance(t, "success", 1) for t in job_spec.TASK_IDS}

    def get_task_log(self, dag_id, run_id, task_id, try_number) -> list[str]:
        return ["done"]

    def get_xcom(self, dag_id, run_id, task_id, key="return_value") -> Any:
        return None

    def set_dag_run_state(self, dag_id, run_id, state):
        return None

    def list_active_runs(self, dag_id: str, limit: int = 500) -> list[DagRun]:
        return [DagRun(dag_id, r, s) for r, s in self.states.items() if s in ("queued", "running")][:limit]

    def close(self) -> None:
        pass


def user(client: TestClient) -> tuple[dict[str, str], str]:
    name = f"b_{uuid.uuid4().hex[:8]}"
    client.post("/v1/auth/signup", json={"username": name, "email": f"{name}@example.com", "password": "benchmark-pw"})
    token = client.post("/v1/auth/login", json={"username": name, "password": "benchmark-pw"}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    owner = client.get("/v1/auth/me", headers=headers).json()["id"]
    dataset_id = new_id()
    with client.app.state.sessionmaker() as session:
        session.add(Dataset(id=dataset_id, owner_id=owner, name="d", file_name="d.zip", stage="ready", status="ready",
                            s3_key=s3_layout.dataset_upload_key(dataset_id, "d.zip"),
                            stats={"tasks": ["video_classification"]}))
        session.commit()
    return headers, dataset_id


def post(client: TestClient, headers: dict[str, str], dataset_id: str) -> tuple[float, str]:
    body = {"model_id": MODEL, "dataset_id": dataset_id, "output_name": "b", "training_params": {"epochs": 1}}
    started = time.perf_counter()
    resp = client.post("/v1/trainings", json=body, headers=headers)
    took = time.perf_counter() - started
    assert resp.status_code == 202, resp.text
    return took, resp.json()["job_id"]


def stats(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"p50 {statistics.median(ms):6.2f} ms  mean {statistics.fmean(ms):6.2f} ms  p90 {ms[int(len(ms) * 0.9)]:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--settles", type=int, default=100)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qlora-bench-follow-"))
    folder.chmod(0o755)
    pg = Postgres(folder / "pg", free_ports(1)[0])
    pg.start()
    try:
        settings = Settings(database_url=pg.create_database("bench_follow"), reconcile_interval_s=0,
                            webhook_poll_interval_s=0, webhook_allow_private=True, live_state_ttl_s=0,
                            max_active_jobs_per_user=100_000)  # the quota is not what is measured
        airflow = FastAirflow()
        app = create_app(settings, s3=NoS3(), airflow=airflow, mlflow=None)  # type: ignore[arg-type]
        app.dependency_overrides[get_airflow] = lambda: airflow
        app.dependency_overrides[get_mlflow] = lambda: None
        with TestClient(app) as client:
            headers, dataset_id = user(client)
            for _ in range(20):  # warm-up
                post(client, headers, dataset_id)
            with_event, without, created = [], [], []
            real = events.job_created
            for i in range(args.starts * 2):
                off = i % 2 == 1
                events.job_created = (lambda session, job: None) if off else real  # type: ignore[assignment]
                took, job_id = post(client, headers, dataset_id)
                (without if off else with_event).append(took)
                created.append(job_id)
            events.job_created = real  # type: ignore[assignment]
            print(f"POST /v1/trainings ({args.starts} each, interleaved, PostgreSQL, Airflow faked):")
            print(f"  with the status event    {stats(with_event)}")
            print(f"  without it               {stats(without)}")
            print(f"  ratio (mean)             {statistics.fmean(with_event) / statistics.fmean(without):.3f}")

            # settling: a user with one webhook (an outbox row per job) beside one without
            results: dict[str, list[float]] = {"with a webhook": [], "without webhooks": []}
            hooked, plain = user(client), user(client)
            assert client.post("/v1/webhooks", headers=hooked[0], json={
                "url": "http://127.0.0.1:9/hook", "events": ["training.completed"]}).status_code == 201
            for _ in range(args.settles // 10):
                for label, (h, d) in (("with a webhook", hooked), ("without webhooks", plain)):
                    jobs = [post(client, h, d)[1] for _ in range(10)]
                    reconcile_once(app)  # nothing due but these
                    for job_id in jobs:
                        airflow.states[job_spec.dag_run_id(job_id)] = "success"
                    started = time.perf_counter()
                    reconcile_once(app)  # refreshes and settles the 10
                    results[label].append((time.perf_counter() - started) / 10)
            print(f"reconcile pass settling completed jobs (per job, {args.settles} each):")
            for label, values in results.items():
                print(f"  {label:24s} {stats(values)}")
            print(f"  ratio (mean)             {statistics.fmean(results['with a webhook']) / statistics.fmean(results['without webhooks']):.3f}")
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
