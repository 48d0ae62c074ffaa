"""MLflow and Airflow start for the test session and answer real requests."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.stack


def test_mlflow_server_is_healthy_and_stores_artifacts_in_s3(mlflow_uri, s3, tmp_path):
    import mlflow

    assert httpx.get(f"{mlflow_uri}/health").status_code == 200
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.create_experiment("devstack-probe")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5)
    (tmp_path / "note.txt").write_text("hello")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    assert client.get_run(run.info.run_id).data.metrics["loss"] == 0.5
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys)


def test_airflow_issues_a_token_and_lists_dags(airflow):
    token = airflow.token()
    response = httpx.get(f"{airflow.base_url}/api/v2/dags", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert "dags" in response.json()
    pools = httpx.get(f"{airflow.base_url}/api/v2/pools/gpu", headers={"Authorization": f"Bearer {token}"})
    assert pools.status_code == 200 and pools.json()["slots"] == 1


def test_the_scheduler_sleeps_less_than_airflows_default_between_loops(airflow):
    """What the stack's Airflow processes read for [scheduler] scheduler_idle_sleep_time (the wait
    between a task's end and the next one's queueing): the value set in devstack/airflow.py, not
    Airflow's default 1 s (a misspelt variable would leave the default)."""
    from devstack.airflow import SCHEDULER_IDLE_SLEEP_S

    got = subprocess.run([sys.executable, "-m", "airflow", "config", "get-value", "scheduler",
                          "scheduler_idle_sleep_time"], env=airflow.env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    assert float(got.stdout.strip().splitlines()[-1]) == float(SCHEDULER_IDLE_SLEEP_S) < 1


def test_airflow_refuses_a_wrong_password(airflow):
    response = httpx.post(f"{airflow.base_url}/auth/token", json={"username": airflow.username, "password": "nope"})
    assert response.status_code in (401, 403)
    assert httpx.get(f"{airflow.base_url}/api/v2/dags").status_code == 401
