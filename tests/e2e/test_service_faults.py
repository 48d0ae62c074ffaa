"""Fault injection on a private real stack (PostgreSQL 15, SeaweedFS S3, MLflow with basic-auth,
Airflow 3 with the LocalExecutor, the API under uvicorn), one per module, since these tests kill
and restart its services (the session stack of tests/conftest.py is shared by other tests and
is never touched here). Each case ends with the job in the right terminal state with the right
reason, one job and one Airflow run, no training process left, and its adapter whole in S3:

* the Airflow scheduler SIGKILLed mid-training (with its process group, as a crash or an OOM
  kill of its container takes its LocalExecutor workers too), restarted the way `make up` does:
  the job completes;
* the MLflow server down for 30 s during training: training goes on, the metrics logged meanwhile
  arrive late (each at its own step and time), the API keeps answering, the job completes;
* S3 down while the engine uploads its finished adapter: the upload is retried (within
  `QLORA_ADAPTER_UPLOAD_RETRY_S`, 300 s) and the job completes once S3 is back;
* PostgreSQL (the service database) restarted while clients poll: 503 with a `detail` (never
  500) while it is down, 200 again after, and the job completes.

Airflow here bounds how long a task whose process died is taken for running: orphaned task
instances are looked for every 10 s (`[scheduler] orphaned_tasks_check_interval`, default 300 s)
and a task instance without a heartbeat for 60 s fails and is retried
(`[scheduler] task_instance_heartbeat_timeout`, default 300 s)."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.airflow import Airflow
from devstack.api_server import APIServer
from devstack.mlflow_server import API_ACCOUNT, WORKER_ACCOUNT, MlflowAuth, MLflowServer
from devstack.ports import free_ports
from devstack.postgres import Postgres
from devstack.processes import pid_alive, pids_with_args
from devstack.seaweedfs import SeaweedFS
from devstack.seed import seed_tiny_models
from tests.e2e.journey import TERMINAL, login, own_api, ready_dataset, sigkill, start_job, watch
from training import job_spec

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(1200)]

MODEL = "flamingo-tiny-classification"
#: Airflow settings that bound how long a dead task is taken for running (see the docstring)
AIRFLOW_FAULT_SETTINGS = {"AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
                          "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60"}


@dataclass
class PrivateStack:
    folder: Path
    postgres: Postgres
    s3: SeaweedFS
    mlflow: MLflowServer
    mlflow_auth: MlflowAuth
    airflow: Airflow
    api: APIServer

    @property
    def base(self) -> str:
        return self.api.url + "/v1"

    def mlflow_history(self, run_id: str, key: str) -> list[dict]:
        """The metric's history as MLflow serves it (as its admin)."""
        resp = httpx.get(f"{self.mlflow.url}/api/2.0/mlflow/metrics/get-history",
                         params={"run_id": run_id, "metric_key": key, "max_results": 25000},
                         auth=(self.mlflow_auth.admin_username, self.mlflow_auth.admin_password), timeout=30)
        resp.raise_for_status()
        return resp.json().get("metrics", [])

    def airflow_runs(self, job_id: str) -> list[str]:
        resp = httpx.get(f"{self.airflow.url}/api/v2/dags/{job_spec.DAG_ID}/dagRuns",
                         params={"run_id_pattern": job_id},
                         headers={"Authorization": f"Bearer {self.airflow.token()}"}, timeout=30)
        resp.raise_for_status()
        return [r["dag_run_id"] for r in resp.json()["dag_runs"]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> PrivateStack:
    # not under pytest's tmp folder: /tmp/pytest-of-root is 0700 and PostgreSQL runs as `postgres`
    top = Path(tempfile.mkdtemp(prefix="qlora-faults-"))
    top.chmod(0o755)
    started = []
    try:
        postgres = Postgres(top / "pg", free_ports(1)[0])
        postgres.start()
        started.append(postgres)
        ports = free_ports(10)
        s3 = SeaweedFS(top / "s3", s3_port=ports[0], master_port=ports[1], volume_port=ports[2],
                       filer_port=ports[3], admin_port=ports[4], grpc_ports=tuple(ports[5:]),
                       access_key="faults-" + secrets.token_hex(6), secret_key=secrets.token_urlsafe(24),
                       bucket="qlora-faults")
        s3.start()
        started.append(s3)
        s3.wait_ready()
        auth = MlflowAuth(admin_password=secrets.token_urlsafe(16), secret_key=secrets.token_urlsafe(24),
                          accounts={API_ACCOUNT: secrets.token_urlsafe(16), WORKER_ACCOUNT: secrets.token_urlsafe(16)})
        mlflow = MLflowServer(top / "mlflow", free_ports(1)[0], s3.settings, auth=auth)
        mlflow.start()
        started.append(mlflow)
        mlflow.wait_ready()
        mlflow_env = {"MLFLOW_TRACKING_URI": mlflow.url, **auth.client_env(WORKER_ACCOUNT)}
        airflow = Airflow(top / "airflow", free_ports(1)[0], password=secrets.token_urlsafe(12),
                          jwt_secret=secrets.token_urlsafe(32), secret_key=secrets.token_urlsafe(32),
                          extra_env={**s3.settings.env(), **mlflow_env, "QLORA_CACHE_DIR": str(top / "cache"),
                                     "QLORA_GPU_POOL_SLOTS": "1", **AIRFLOW_FAULT_SETTINGS})
        airflow.start()
        started.append(airflow)
        airflow.wait_ready()
        lines = seed_tiny_models(s3.settings, top / "seed.log")
        assert not any("failed" in line for line in lines), lines
        with own_api(top / "api", database_url=postgres.create_database("qlora_faults"), s3=s3.settings,
                     airflow=airflow, mlflow_uri=mlflow.url,
                     settings={**auth.client_env(API_ACCOUNT), "QLORA_RECONCILE_INTERVAL_S": "1",
                               "QLORA_MLFLOW_TIMEOUT_S": "3"}) as api:
            yield PrivateStack(top, postgres, s3, mlflow, auth, airflow, api)
    finally:
        for service in reversed(started):
            service.stop()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def user(stack, tmp_path_factory) -> tuple[dict[str, str], str]:
    """A signed-up user's auth header and a `ready` dataset of theirs."""
    with httpx.Client(base_url=stack.base, timeout=60) as api:
        login(api)
        dataset_id = ready_dataset(api, tmp_path_factory.mktemp("data"))
        return dict(api.headers), dataset_id


@pytest.fixture
def api(stack, user):
    """The user's client; a job a failed case leaves running is stopped (one `gpu` slot: it would
    hold up the next case)."""
    with httpx.Client(base_url=stack.base, timeout=60, headers=user[0]) as client:
        yield client
        for job in client.get("/trainings", params={"limit": 100}).json():
            if job["status"] not in TERMINAL:
                client.post(f"/trainings/{job['job_id']}/stop")
                watch(client, job["job_id"], lambda j: j["status"] in TERMINAL, 300)


def engines(job_id: str) -> list[int]:
    return [pid for pid in pids_with_args("training", "run", job_id) if pid_alive(pid)]


def wait_no_engine(job_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while engines(job_id):
        assert time.monotonic() < deadline, f"training processes of {job_id} still run: {engines(job_id)}"
        time.sleep(0.5)


def wait_training(api: httpx.Client, job_id: str, progress: float = 0.0, timeout_s: float = 300) -> dict:
    """Waits until the engine of the job runs and its progress (from MLflow) passed `progress`."""
    job, _ = watch(api, job_id, lambda j: j["status"] in TERMINAL or (
        j["stage"] == "training" and (j["progress"] or 0) > progress and engines(job_id)), timeout_s)
    assert job["status"] == "running", job
    return job


def assert_adapter_whole(api: httpx.Client, job_id: str) -> int:
    """Every adapter file downloads and matches the SHA-256 the engine recorded; the count."""
    resp = api.get(f"/trainings/{job_id}/adapter")
    assert resp.status_code == 200, resp.text
    adapter = resp.json()
    assert adapter["partial"] is False and adapter["files"], adapter
    for entry in adapter["files"]:
        body = httpx.get(entry["download_url"], timeout=60)
        assert body.status_code == 200, (entry["name"], body.status_code)
        assert hashlib.sha256(body.content).hexdigest() == entry["sha256"], entry["name"]
    return len(adapter["files"])


def assert_one_job_one_run(stack: PrivateStack, api: httpx.Client, job_id: str) -> None:
    jobs = [j["job_id"] for j in api.get("/trainings", params={"limit": 100}).json()]
    assert jobs.count(job_id) == 1
    assert stack.airflow_runs(job_id) == [job_spec.dag_run_id(job_id)]


# -- a. the scheduler --------------------------------------------------------------------------
def test_scheduler_sigkilled_mid_training_the_job_completes_once_it_is_back(stack, api, user):
    job_id = start_job(api, user[1], MODEL, "sched-kill", epochs=6, batch_size=1, checkpoint_every_steps=5,
                       seed=3)
    wait_training(api, job_id, progress=0.1)
    scheduler = next(p for p in stack.airflow.processes if p.name == "airflow-scheduler")
    sigkill(scheduler)
    killed = time.monotonic()
    # the LocalExecutor's workers went with it; the task's engine stops (it saves a checkpoint)
    wait_no_engine(job_id, 60)
    gone = time.monotonic() - killed
    assert not scheduler.running()
    during = api.get(f"/trainings/{job_id}")
    assert during.status_code == 200 and during.json()["status"] == "running", during.text
    time.sleep(5)
    stack.airflow.start()  # what `make up` does for a dead scheduler: restart it alone
    stack.airflow.wait_ready()
    restarted = time.monotonic()
    final, seen = watch(api, job_id, lambda j: j["status"] in TERMINAL, 600)
    print(f"\nscheduler SIGKILLed mid-training: engine gone {gone:.1f} s later; restarted; job {final['status']} "
          f"{time.monotonic() - restarted:.1f} s after the restart")
    assert final["status"] == "completed", (final.get("error"), final.get("logs"))
    assert "failed" not in {j["status"] for j in seen}
    assert_one_job_one_run(stack, api, job_id)
    assert assert_adapter_whole(api, job_id) >= 3
    wait_no_engine(job_id, 30)


# -- b. MLflow ---------------------------------------------------------------------------------
def test_mlflow_down_30_s_during_training_metrics_arrive_late_and_the_job_completes(stack, api, user):
    job_id = start_job(api, user[1], MODEL, "mlflow-down", epochs=10, batch_size=1, seed=4)
    wait_training(api, job_id)
    sigkill(stack.mlflow)
    down_at = time.time()
    answers = Counter()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the API keeps answering from what it has
        resp = api.get(f"/trainings/{job_id}")
        answers[resp.status_code] += 1
        assert resp.status_code in (200, 503), resp.text
        time.sleep(1)
    stack.mlflow.start()
    stack.mlflow.wait_ready()
    up_at = time.time()
    final, _ = watch(api, job_id, lambda j: j["status"] in TERMINAL, 600)
    print(f"\nMLflow down {up_at - down_at:.1f} s: API answers {dict(answers)}; job {final['status']} "
          f"{time.time() - up_at:.1f} s after MLflow was back")
    assert final["status"] == "completed", (final.get("error"), final.get("logs"))
    assert final["mlflow_run_id"] and final["metrics"].get("final_accuracy") is not None, final["metrics"]
    loss = stack.mlflow_history(final["mlflow_run_id"], "loss")
    steps = sorted(m["step"] for m in loss)
    total = max(steps)
    assert steps == list(range(1, total + 1)), steps  # nothing lost
    late = [m["step"] for m in loss if down_at * 1000 <= m["timestamp"] <= up_at * 1000]
    print(f"steps logged while MLflow was down (sent after): {len(late)} of {total}")
    assert late, "no step was trained while MLflow was down"
    assert_one_job_one_run(stack, api, job_id)
    assert assert_adapter_whole(api, job_id) >= 3
    wait_no_engine(job_id, 30)


# -- c. S3 -------------------------------------------------------------------------------------
def _train_log(stack: PrivateStack, job_id: str) -> str:
    logs = stack.airflow.folder / "logs" / f"dag_id={job_spec.DAG_ID}" / f"run_id={job_spec.dag_run_id(job_id)}"
    return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("task_id=train/*.log")))


def _adapter_upload_lines(stack: PrivateStack, job_id: str) -> str:
    """The engine's lines about its adapter upload (`uploaded N files to s3://.../adapter...`)."""
    return "\n".join(line for line in _train_log(stack, job_id).splitlines() if "files to s3://" in line
                     and "/checkpoints/" not in line)


def test_s3_down_while_the_adapter_uploads_is_retried_and_the_job_completes(stack, api, user):
    job_id = start_job(api, user[1], MODEL, "s3-down", epochs=6, batch_size=1, seed=5)
    # S3 goes down well before the end: the progress the API shows lags the engine by seconds
    # under load, and a kill after the adapter upload would test nothing (the engine would wait
    # on MLflow's artifact retries instead). The epoch checkpoints meanwhile fail to upload
    # (logged; the training goes on).
    wait_training(api, job_id, progress=0.3, timeout_s=600)
    sigkill(stack.s3)
    down = time.monotonic()
    try:
        deadline = down + 300
        while "S3 did not take the upload" not in _train_log(stack, job_id):  # the engine is in its adapter upload
            assert "uploaded" not in _adapter_upload_lines(stack, job_id), "the adapter was uploaded before S3 went down"
            assert time.monotonic() < deadline, _train_log(stack, job_id)[-3000:]
            time.sleep(1)
        reached = time.monotonic() - down
        time.sleep(max(5.0, 30 - reached))  # down 30 s at least, and through a few upload attempts
    finally:  # the next cases need S3, whatever happened here
        stack.s3.start()
        stack.s3.wait_ready()
    up = time.monotonic()
    final, seen = watch(api, job_id, lambda j: j["status"] in TERMINAL, 600)
    print(f"\nS3 down {up - down:.1f} s (the adapter upload began failing {reached:.1f} s in): job {final['status']} "
          f"{time.monotonic() - up:.1f} s after S3 was back; error: {final.get('error')}")
    assert final["status"] == "completed", (final.get("error"), final.get("logs"))
    assert "failed" not in {j["status"] for j in seen}
    assert_one_job_one_run(stack, api, job_id)
    assert assert_adapter_whole(api, job_id) >= 3
    wait_no_engine(job_id, 30)


# -- d. PostgreSQL -----------------------------------------------------------------------------
def test_database_restarted_under_load_503_with_a_detail_then_recovery(stack, api, user):
    job_id = start_job(api, user[1], MODEL, "db-restart", epochs=3, batch_size=2, seed=6)
    wait_training(api, job_id)
    codes: Counter = Counter()
    bad: list[str] = []
    stop = threading.Event()

    def poll(path: str) -> None:
        with httpx.Client(base_url=stack.base, timeout=30, headers=api.headers) as client:
            while not stop.is_set():
                try:
                    resp = client.get(path)
                except httpx.TransportError as exc:
                    codes["transport"] += 1
                    bad.append(f"{path}: {exc!r}")
                    continue
                codes[resp.status_code] += 1
                if resp.status_code == 503:
                    detail = resp.json().get("detail", "")
                    if "database" not in detail or "Retry-After" not in resp.headers:
                        bad.append(f"{path}: 503 {resp.text}")
                elif resp.status_code != 200:
                    bad.append(f"{path}: {resp.status_code} {resp.text[:200]}")
                time.sleep(0.05)

    pollers = [threading.Thread(target=poll, args=(path,), daemon=True)
               for path in ["/trainings", f"/trainings/{job_id}", "/datasets", f"/trainings/{job_id}/events"] * 2]
    for t in pollers:
        t.start()
    time.sleep(3)
    before = dict(codes)
    stack.postgres.stop()
    stopped = time.monotonic()
    time.sleep(10)
    during = dict(codes)
    stack.postgres.start()
    restarted = time.monotonic()
    recovered = None
    while time.monotonic() - restarted < 60:
        resp = api.get(f"/trainings/{job_id}")
        if resp.status_code == 200:
            recovered = time.monotonic() - restarted
            break
        time.sleep(0.2)
    time.sleep(3)
    stop.set()
    for t in pollers:
        t.join(30)
    print(f"\nPostgreSQL down {restarted - stopped:.1f} s under 8 polling clients: answers {dict(codes)} "
          f"(before {before}, by the restart {during}); 200 again {recovered} s after the restart")
    assert not bad, bad[:5]
    assert codes[503] > 0, codes  # the outage was seen, as 503s
    assert recovered is not None
    final, _ = watch(api, job_id, lambda j: j["status"] in TERMINAL, 600)
    assert final["status"] == "completed", (final.get("error"), final.get("logs"))
    assert_one_job_one_run(stack, api, job_id)
    assert assert_adapter_whole(api, job_id) >= 3
    wait_no_engine(job_id, 30)
