"""`python -m devstack up|down|status` (what `make up/down/status` run), on ports of its own:
it starts everything, is idempotent, stops by pid, and state and secrets survive down/up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devstack.ports import port_open
from devstack.secrets_file import read_env_file

pytestmark = pytest.mark.stack


def _shell(stack_env: Path, code: str) -> str:
    """Runs Python in a shell that sourced stack.env, as a user would."""
    script = f"source {stack_env} && {sys.executable} -c '{code}'"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, timeout=60).stdout


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

    assert "already running" in stack_cli("up", "--no-seed")
    status = stack_cli("status")
    assert status.count("healthy") == 4, status

    assert "stopped: api, airflow, mlflow, seaweedfs" in stack_cli("down")
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
