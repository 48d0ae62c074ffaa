"""`python -m devstack up|down|status` (what `make up/down/status` run), on ports of its own:
it starts everything, is idempotent, stops by pid, and state and secrets survive down/up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devstack.ports import port_open
from devstack.processes import pid_alive, pids_with_args
from devstack.secrets_file import read_env_file

pytestmark = pytest.mark.stack


def _shell(stack_env: Path, code: str) -> str:
    """Runs Python in a shell that sourced stack.env, as a user would."""
    script = f"source {stack_env} && {sys.executable} -c '{code}'"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, timeout=60).stdout


def _kill_scheduler(folder: Path) -> None:
    """SIGKILL to the scheduler's process group, as if the machine's OOM killer took it."""
    pid = int((folder / "airflow" / "run" / "airflow-scheduler.pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _wait_for_health(api_url: str, status: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.get(f"{api_url}/v1/health", timeout=15)
        if resp.status_code == status or time.monotonic() > deadline:
            assert resp.status_code == status, resp.text
            return resp.json()
        time.sleep(2)


def test_up_status_down_up_keeps_state_and_secrets(stack_cli):
    out = stack_cli("up", "--no-seed")
    folder = stack_cli.folder
    assert "Airflow UI" in out and "MLflow UI" in out and "/v1" in out
    secrets = read_env_file(folder / "secrets.env")
    assert secrets["AIRFLOW_ADMIN_PASSWORD"] in out  # credentials are printed
    stack_env = folder / "stack.env"

    # a shell that sourced stack.env talks to S3 and MLflow
    _shell(stack_env, 'import boto3, os; boto3.client("s3").put_object('
                      'Bucket=os.environ["QLORA_S3_BUCKET"], Key="keep/me.txt", Body=b"kept")')
    _shell(stack_env, 'import mlflow; mlflow.MlflowClient().create_experiment("kept-experiment")')
    env = {line.split("=", 1)[0].removeprefix("export "): line.split("=", 1)[1].strip("'")
           for line in stack_env.read_text().splitlines() if line.startswith("export ")}
    assert httpx.get(f"{env['QLORA_API_URL']}/v1/openapi.json").status_code == 200
    # MLflow signs everyone in (its admin's password is printed); a user of the API gets an account
    assert secrets["MLFLOW_ADMIN_PASSWORD"] in out
    mlflow_api = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow"
    assert httpx.get(f"{mlflow_api}/experiments/get-by-name", params={"experiment_name": "kept-experiment"}
                     ).status_code == 401
    ada = ("ada_mlflow", "correct horse battery")
    assert httpx.post(f"{env['QLORA_API_URL']}/v1/auth/signup", timeout=30, json={
        "username": ada[0], "email": "ada@example.com", "password": ada[1]}).status_code == 201
    assert httpx.get(f"{mlflow_api}/experiments/get-by-name", params={"experiment_name": "qlora/ada_mlflow"},
                     auth=ada).status_code == 200
    assert httpx.get(f"{mlflow_api}/experiments/get-by-name", params={"experiment_name": "kept-experiment"},
                     auth=ada).status_code == 403

    # the engine worker's warm engine server (training.pipeline.warm_engine) was started too
    warm = str(Path(env["QLORA_CACHE_DIR"]) / "warm-engine")
    deadline = time.monotonic() + 60
    while not pids_with_args("training.pipeline.warm_engine", "serve", warm) and time.monotonic() < deadline:
        time.sleep(0.5)
    (warm_server,) = pids_with_args("training.pipeline.warm_engine", "serve", warm)

    assert "already running" in stack_cli("up", "--no-seed")
    status = stack_cli("status")
    assert status.count("healthy") == 4, status
    assert httpx.get(f"{env['QLORA_API_URL']}/v1/health", timeout=15).status_code == 200

    # the scheduler dies: `status` says so at once, /v1/health names it (once Airflow's heartbeat
    # threshold passed), and `up` restarts it alone
    _kill_scheduler(folder)
    killed = time.monotonic()
    status = stack_cli("status")
    assert [line.split()[2] for line in status.splitlines() if line.startswith("airflow ")] == ["UNHEALTHY"], status
    health = _wait_for_health(env["QLORA_API_URL"], 503, timeout=90)
    print(f"scheduler killed -> /v1/health 503: {time.monotonic() - killed:.1f} s")
    restart = time.monotonic()
    assert "airflow_scheduler" in health["down"] and "airflow_scheduler (the scheduler is" in health["detail"]
    out = stack_cli("up", "--no-seed")
    assert "restarting airflow-scheduler: not running" in out and "already running" not in out
    assert stack_cli("status").count("healthy") == 4
    print(f"devstack up (restart): {time.monotonic() - restart:.1f} s")
    assert _wait_for_health(env["QLORA_API_URL"], 200, timeout=60)["status"] == "ok"
    print(f"restart -> /v1/health 200: {time.monotonic() - restart:.1f} s")

    # `mlflow server` killed alone: its worker keeps the port; `up` stops it and starts MLflow again
    mlflow_pid = int((folder / "mlflow" / "mlflow.pid").read_text().split()[0])
    os.kill(mlflow_pid, signal.SIGKILL)
    while pid_alive(mlflow_pid):
        time.sleep(0.1)
    mlflow_port = int(env["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1])
    assert port_open(mlflow_port)  # the orphaned worker still answers
    out = stack_cli("up", "--no-seed")
    assert "restarting mlflow: its main process died; stopped the 1 process(es)" in out, out
    assert "taken by another program" not in out
    assert stack_cli("status").count("healthy") == 4
    new_pid = int((folder / "mlflow" / "mlflow.pid").read_text().split()[0])
    assert new_pid != mlflow_pid and httpx.get(f"{mlflow_api}/users/current", auth=ada).status_code == 200

    assert "stopped: api, airflow, mlflow, seaweedfs, warm engine" in stack_cli("down")
    deadline = time.monotonic() + 15
    while pid_alive(warm_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(warm_server), "make down left the warm engine server running"
    assert "healthy" not in stack_cli("status")
    assert not any(port_open(int(env[k].rsplit(":", 1)[1]))
                   for k in ("QLORA_API_URL", "QLORA_AIRFLOW_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL_S3"))

    stack_cli("up", "--no-seed")
    assert read_env_file(folder / "secrets.env") == secrets  # generated once, reused
    assert _shell(stack_env, 'import boto3, os; print(boto3.client("s3").get_object('
                             'Bucket=os.environ["QLORA_S3_BUCKET"], Key="keep/me.txt")["Body"].read().decode())'
                  ).strip() == "kept"
    assert _shell(stack_env, 'import mlflow; print(mlflow.MlflowClient().get_experiment_by_name('
                             '"kept-experiment") is not None)').strip() == "True"
    assert httpx.get(f"{mlflow_api}/users/current", auth=ada).status_code == 200  # accounts kept too
