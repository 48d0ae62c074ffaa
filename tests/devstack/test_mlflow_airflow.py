"""MLflow and Airflow start for the test session and answer real requests."""

from __future__ import annotations

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


def test_airflow_refuses_a_wrong_password(airflow):
    response = httpx.post(f"{airflow.base_url}/auth/token", json={"username": airflow.username, "password": "nope"})
    assert response.status_code in (401, 403)
    assert httpx.get(f"{airflow.base_url}/api/v2/dags").status_code == 401
