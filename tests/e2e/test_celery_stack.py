"""`QLORA_STACK_EXECUTOR=celery make up`: Airflow as it runs past one machine (CeleryExecutor,
Redis broker, a `default` and a `gpu` Celery worker with caches of their own, PostgreSQL). A
user's dataset is validated on the default worker, a training runs on the gpu worker to
completion, a stopped training ends `stopped` with its partial adapter, a training whose worker
dies ends `failed`; `down` stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import boto3
import httpx
import pytest

from api.services.datasets import validation_run_id
from devstack.ports import port_open
from devstack.processes import pids_with_args
from devstack.secrets_file import read_env_file
from tests.e2e.journey import TERMINAL, login, ready_dataset, start_job, watch
from training import job_spec
from training.s3 import adapter_prefix, s3_uri

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]

MODEL = "flamingo-tiny-classification"


def _task_queues(stack_env: dict[str, str], dag_id: str, run_id: str) -> dict[str, tuple[str, str]]:
    """{task_id: (queue, state)} of one DAG run, from Airflow's REST API."""
    airflow = stack_env["QLORA_AIRFLOW_URL"]
    token = httpx.post(f"{airflow}/auth/token", json={"username": stack_env["QLORA_AIRFLOW_USERNAME"],
                                                      "password": stack_env["QLORA_AIRFLOW_PASSWORD"]}).json()
    got = httpx.get(f"{airflow}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                    headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=30)
    assert got.status_code == 200, got.text
    return {ti["task_id"]: (ti["queue"], ti["state"]) for ti in got.json()["task_instances"]}


def _adapter_files(stack_env: dict[str, str], job_id: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=stack_env["AWS_ENDPOINT_URL_S3"],
                      aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
                      region_name=stack_env["AWS_DEFAULT_REGION"])
    prefix = adapter_prefix(job_id)
    listed = s3.list_objects_v2(Bucket=stack_env["QLORA_S3_BUCKET"], Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):] for o in listed}


def test_celery_workers_validate_train_and_stop(stack_cli, tmp_path):
    stack_cli.env["QLORA_STACK_EXECUTOR"] = "celery"
    stack_cli.env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = "20"  # 300 s by default
    out = stack_cli("up")
    assert "CeleryExecutor" in out and "failed" not in out, out
    del stack_cli.env["QLORA_STACK_EXECUTOR"]  # plain `make status`/`make down` know the executor
    local = subprocess.run([sys.executable, "-m", "devstack", "up"], capture_output=True, text=True,
                           env={**stack_cli.env, "QLORA_STACK_EXECUTOR": "local"}, timeout=60)
    assert local.returncode == 1 and "runs with the celery executor" in local.stderr, local.stderr
    status = stack_cli("status")
    for service in ("postgres", "redis", "seaweedfs", "mlflow", "airflow", "api"):
        assert any(line.split()[:1] == [service] and "healthy" in line.split() for line in status.splitlines()), status
    env = {line.split("=", 1)[0].removeprefix("export "): line.split("=", 1)[1].strip("'")
           for line in (stack_cli.folder / "stack.env").read_text().splitlines() if line.startswith("export ")}
    assert env["QLORA_DATABASE_URL"].startswith("postgresql")
    env["QLORA_AIRFLOW_PASSWORD"] = read_env_file(stack_cli.folder / "secrets.env")["AIRFLOW_ADMIN_PASSWORD"]
    caches = {queue: stack_cli.folder / "airflow" / "workers" / queue / "cache" for queue in ("default", "gpu")}
    bucket = env["QLORA_S3_BUCKET"]

    with httpx.Client(base_url=env["QLORA_API_URL"] + "/v1", timeout=60) as api:
        login(api)
        dataset_id = ready_dataset(api, tmp_path)
        validation = _task_queues(env, "dataset_validation", validation_run_id(dataset_id))
        assert validation and {queue for queue, _ in validation.values()} == {"default"}, validation

        started = time.monotonic()
        job_id = start_job(api, dataset_id, MODEL, "celery-colour", epochs=2)
        final, seen = watch(api, job_id, lambda j: j["status"] in TERMINAL, 420)
        print(f"celery job: POST -> {final['status']} in {time.monotonic() - started:.1f} s")
        assert final["status"] == "completed", (final.get("error"), final.get("logs"))
        assert final["progress"] == 1.0 and "running" in {j["status"] for j in seen}
        tasks = _task_queues(env, job_spec.DAG_ID, job_spec.dag_run_id(job_id))
        assert {task: state for task, (_, state) in tasks.items()} == dict.fromkeys(tasks, "success")
        assert {task for task, (queue, _) in tasks.items() if queue == "gpu"} == \
            {"prepare", "train", "evaluate"}, tasks  # register and finalize are MLflow/XCom bookkeeping
        # the gpu worker downloaded the model and trained (its job folder is gone once the adapter is
        # in S3 and evaluated); the default worker holds neither
        assert (caches["gpu"] / "models" / MODEL / "config.json").is_file()
        assert (caches["gpu"] / "datasets" / dataset_id / ".last-used").is_file()  # for LRU eviction
        assert (caches["gpu"] / "trainings").is_dir() and not (caches["gpu"] / "trainings" / job_id).exists()
        assert not (caches["default"] / "models").exists() and not (caches["default"] / "trainings").exists()
        assert final["output_path"] == s3_uri(bucket, adapter_prefix(job_id))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= _adapter_files(env, job_id)

        # a stop reaches the training on the gpu worker: it saves, uploads, ends `stopped`
        long_job = start_job(api, dataset_id, MODEL, "celery-long", epochs=100, batch_size=1)
        watch(api, long_job, lambda j: j["status"] == "running" and j["progress"] > 0, 240)
        asked = time.monotonic()
        assert api.post(f"/trainings/{long_job}/stop").status_code == 202
        final, _ = watch(api, long_job, lambda j: j["status"] in TERMINAL, 90)
        print(f"celery stop: request -> {final['status']} in {time.monotonic() - asked:.1f} s")
        assert final["status"] == "stopped", final
        assert final["output_path"] == s3_uri(bucket, adapter_prefix(long_job))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= _adapter_files(env, long_job)
        assert final["error"] is None and final["progress"] < 1.0, final
        assert not (caches["gpu"] / "trainings" / long_job).exists()

        # the gpu worker dies mid-training (its host is lost): Airflow fails the try once its
        # heartbeat times out and retries the train task (which resumes from the last uploaded
        # checkpoint on whichever gpu worker takes it): the job stays running, not failed; with
        # no gpu worker left the retry waits in the queue, and a stop ends it
        doomed = start_job(api, dataset_id, MODEL, "celery-doomed", epochs=100, batch_size=1)
        watch(api, doomed, lambda j: j["status"] == "running" and j["progress"] > 0, 240)
        worker = stack_cli.folder / "airflow" / "run" / "airflow-worker-gpu.pid"
        os.killpg(int(worker.read_text().split()[0]), signal.SIGKILL)
        lost = time.monotonic()
        deadline = lost + 240
        while _task_queues(env, job_spec.DAG_ID, job_spec.dag_run_id(doomed))["train"][1] not in (
                "up_for_retry", "scheduled", "queued"):
            assert time.monotonic() < deadline, "the lost try of train was never retried"
            time.sleep(1)
        print(f"celery worker lost: SIGKILL -> train retried in {time.monotonic() - lost:.1f} s")
        assert not pids_with_args("training", "run", doomed)  # the engine died with its worker
        assert api.get(f"/trainings/{doomed}").json()["status"] == "running"
        assert api.post(f"/trainings/{doomed}/stop").status_code == 202
        final, _ = watch(api, doomed, lambda j: j["status"] in TERMINAL, 120)
        assert final["status"] == "stopped", final

    assert "stopped: api, airflow, mlflow, seaweedfs, postgres, redis" in stack_cli("down")
    assert not any(port_open(int(env[k].rsplit(":", 1)[1].split("/")[0]))
                   for k in ("QLORA_API_URL", "QLORA_AIRFLOW_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3"))
