"""Fault injection on the real stack (API under uvicorn on PostgreSQL, SeaweedFS, Airflow running
`qlora_training`, MLflow): the API SIGKILLed between the commit of a job and the trigger of its
run. Airflow is reached through a loopback proxy of the test's own that can hold the trigger
(the API is then blocked in it, its job committed), so the kill lands exactly there. After the
restart the reconcile pass triggers the job's run once, the job completes, and a client retry
with the same `Idempotency-Key` gets the same job: no duplicate job, no duplicate run."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from devstack.ports import free_ports
from devstack.seed import seed_tiny_models
from tests.e2e.journey import login, own_api, ready_dataset, sigkill, watch
from training import job_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]

MODEL = "flamingo-tiny-classification"


class HoldingProxy:
    """Forwards every request to Airflow, except the triggers of `qlora_training` runs while
    `hold` is set: those wait (the caller hangs) and are answered 503 once released."""

    def __init__(self, upstream: str) -> None:
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = 0
        self.triggers_forwarded: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                trigger = self.command == "POST" and self.path.startswith(f"/api/v2/dags/{job_spec.DAG_ID}/dagRuns")
                if trigger and proxy.hold.is_set():
                    proxy.held += 1
                    proxy.release.wait(600)
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if trigger:
                    proxy.triggers_forwarded.append(self.path)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = httpx.request(self.command, upstream + self.path, content=body, headers=headers, timeout=60)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def _safe(self) -> None:
                try:
                    self._forward()
                except (BrokenPipeError, ConnectionResetError):  # the API was killed mid-request
                    pass

            do_GET = do_POST = do_PATCH = _safe  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def proxy(airflow):
    held = HoldingProxy(airflow.url)
    yield held
    held.close()


@pytest.fixture
def fault_api(postgres_server, s3, airflow, mlflow_uri, proxy, tmp_path):
    """An API of this test's own behind the proxy: reconcile every second, triggers of jobs
    left without a run after 2 s, Airflow calls that wait long enough to be killed in."""
    with own_api(tmp_path / "api", database_url=postgres_server.create_database("qlora_faults", exist_ok=True),
                 s3=s3, airflow=airflow, mlflow_uri=mlflow_uri, airflow_url=proxy.url,
                 settings={"QLORA_AIRFLOW_TIMEOUT_S": "120", "QLORA_RECONCILE_INTERVAL_S": "1",
                           "QLORA_TRIGGER_GRACE_S": "2"}) as server:
        yield server


def test_sigkill_of_the_api_between_commit_and_trigger(fault_api, proxy, airflow, s3, tmp_path):
    lines = seed_tiny_models(s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    base = f"http://127.0.0.1:{fault_api.port}/v1"
    with httpx.Client(base_url=base, timeout=30) as api:
        login(api)
        dataset_id = ready_dataset(api, tmp_path)
        body = {"model_id": MODEL, "dataset_id": dataset_id, "output_name": "survivor",
                "training_params": {"epochs": 1, "batch_size": 2, "lora_rank": 4}}
        headers = {"Idempotency-Key": "fault-1"}

        proxy.hold.set()
        def post_and_die() -> None:
            try:
                httpx.post(f"{base}/trainings", json=body, timeout=180, headers={**api.headers, **headers})
            except httpx.TransportError:  # the API is killed under this request
                pass

        posting = threading.Thread(target=post_and_die, daemon=True)
        posting.start()
        deadline = time.monotonic() + 60
        while proxy.held == 0:  # the API is in its trigger call: the job is committed
            assert time.monotonic() < deadline, "the API never triggered the run"
            time.sleep(0.1)
        (job,) = api.get("/trainings").json()
        assert job["status"] == "queued"

        sigkill(fault_api)  # the trigger never reaches Airflow
        proxy.hold.clear()
        proxy.release.set()
        killed = time.monotonic()
        fault_api.start()
        fault_api.wait_ready()

        # the client's retry with its key: the same job
        retry = api.post("/trainings", json=body, headers=headers)
        assert retry.status_code == 202 and retry.json()["job_id"] == job["job_id"], retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"

        final, _ = watch(api, job["job_id"], lambda j: j["status"] in ("completed", "failed", "stopped"),
                         timeout_s=300)
        print(f"API SIGKILLed between commit and trigger: job completed {time.monotonic() - killed:.1f} s later")
        assert final["status"] == "completed", (final["error"], final["logs"][-3000:])
        assert [j["job_id"] for j in api.get("/trainings").json()] == [job["job_id"]]  # no duplicate job
        assert proxy.triggers_forwarded == [f"/api/v2/dags/{job_spec.DAG_ID}/dagRuns"]  # triggered once
        runs = httpx.get(f"{airflow.url}/api/v2/dags/{job_spec.DAG_ID}/dagRuns",
                         params={"run_id_pattern": job["job_id"]},
                         headers={"Authorization": f"Bearer {airflow.token()}"}, timeout=30).json()["dag_runs"]
        assert [r["dag_run_id"] for r in runs] == [job_spec.dag_run_id(job["job_id"])]  # no duplicate run
