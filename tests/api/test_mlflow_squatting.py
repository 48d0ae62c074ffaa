"""Registered models cannot be squatted and users create nothing in MLflow, against the REAL
tracking server (basic-auth app with `mlflow/qlora_mlflow_auth.py` as its sign-in function, as
`make up` and compose run it).

The attack: ana, signed in to MLflow with her own service credentials, creates the registered
model `bob~x` before bob's job registers its adapter there. MLflow would make her its MANAGE
holder, and the worker's `register_adapter` (which takes an existing model as its own) would then
add bob's version to ana's model. Likewise any user could create experiments of their own and
upload artifacts through the server's proxy, outside the service's storage quota."""

from __future__ import annotations

import uuid

import mlflow
import pytest

from devstack.mlflow_server import API_ACCOUNT, WORKER_ACCOUNT
from tests.api.test_mlflow_accounts import API2, PASSWORD, Mlflow, _log_run, _signup, app_client  # noqa: F401
from training import job_spec

API3 = "/api/3.0/mlflow"


@pytest.fixture
def accounts(app_client, mlflow_server):  # noqa: F811
    ana, bob = _signup(app_client), _signup(app_client)
    worker = Mlflow(mlflow_server.url, (WORKER_ACCOUNT, mlflow_server.auth.accounts[WORKER_ACCOUNT]))
    return ana, bob, Mlflow(mlflow_server.url, (ana, PASSWORD)), worker


def test_a_user_cannot_create_another_users_registered_model(app_client, mlflow_server, accounts):  # noqa: F811
    ana, bob, a, worker = accounts
    name = job_spec.registered_model_name(bob, "x")
    squat = a.post(f"{API2}/registered-models/create", name=name)
    assert squat.status_code == 403, squat.text
    assert squat.json()["error_code"] == "PERMISSION_DENIED"
    assert "only the service creates MLflow resources" in squat.json()["message"]
    # the UI's route and a prompt (a registered model with a tag) are refused too
    assert a.post("/ajax-api/2.0/mlflow/registered-models/create", name=name).status_code == 403
    assert a.post(f"{API2}/registered-models/create", name=f"{name}-prompt",
                  tags=[{"key": "mlflow.prompt.is_prompt", "value": "true"}]).status_code == 403
    # nor through MLflow's own Python client, signed in as ana
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", ana)
        env.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        with pytest.raises(mlflow.exceptions.MlflowException, match="only the service creates"):
            client.create_registered_model(job_spec.registered_model_name(bob, "y"))

    # the model does not exist, so bob's job registers its own; ana cannot touch it
    assert worker.get(f"{API2}/registered-models/get", name=name).status_code == 404
    app_client.app.state.mlflow_accounts.grant_registered_model(bob, "x")  # what starting bob's job does
    exp, run = _log_run(worker, bob)
    assert worker.post(f"{API2}/registered-models/create", name=name).status_code == 200  # admins create
    version = worker.post(f"{API2}/model-versions/create", name=name, source=f"runs:/{run}/adapter", run_id=run)
    assert version.status_code == 200, version.text
    b = Mlflow(mlflow_server.url, (bob, PASSWORD))
    assert b.get(f"{API2}/registered-models/get", name=name).status_code == 200
    assert b.get(f"{API2}/model-versions/get", name=name, version="1").status_code == 200
    for resp in (a.get(f"{API2}/registered-models/get", name=name),
                 a.get(f"{API2}/model-versions/get", name=name, version="1"),
                 a.post(f"{API2}/model-versions/create", name=name, source=f"runs:/{run}/adapter"),
                 a.post(f"{API2}/registered-models/rename", name=name, new_name=f"{ana}~stolen"),
                 a.http.request("DELETE", f"{API2}/registered-models/delete", json={"name": name}),
                 a.post(f"{API3}/users/permissions/grant", username=ana, resource_type="registered_model",
                        resource_id=name, permission="MANAGE")):
        assert resp.status_code == 403, (resp.request.url, resp.status_code, resp.text[:200])
    assert worker.get(f"{API2}/registered-models/get", name=name).json()["registered_model"]["name"] == name


def test_users_create_no_experiments_and_upload_nothing_outside_the_quota(mlflow_server, accounts):
    ana, bob, a, worker = accounts
    for route in (f"{API2}/experiments/create", "/ajax-api/2.0/mlflow/experiments/create"):
        resp = a.post(route, name=f"{ana}-own-{uuid.uuid4().hex[:6]}", artifact_location="s3://qlora/elsewhere")
        assert resp.status_code == 403, (route, resp.text)
    # her own experiment is READ only: no run, no artifact through the proxy
    own = a.experiment_id(job_spec.mlflow_experiment_name(ana))
    assert a.post(f"{API2}/runs/create", experiment_id=own).status_code == 403
    put = a.http.put(f"/api/2.0/mlflow-artifacts/artifacts/{own}/x/artifacts/big.bin", content=b"0" * 1024)
    assert put.status_code == 403
    # the other creation routes MLflow would make her MANAGE of
    for route, body in ((f"{API3}/gateway/secrets/create", {"secret_name": "k", "secret_value": {"api_key": "v"},
                                                            "provider": "openai"}),
                        (f"{API3}/scorers/register", {"experiment_id": own, "name": "s", "serialized_scorer": "{}"}),
                        (f"{API3}/workspaces", {"name": f"ws-{uuid.uuid4().hex[:6]}"})):
        resp = a.post(route, **body)
        assert resp.status_code in (403, 404), (route, resp.status_code, resp.text[:200])  # 404: feature off
    # the service accounts still create what they need
    api = Mlflow(mlflow_server.url, (API_ACCOUNT, mlflow_server.auth.accounts[API_ACCOUNT]))
    assert api.post(f"{API2}/experiments/create", name=f"svc-{uuid.uuid4().hex[:8]}").status_code == 200
    assert worker.post(f"{API2}/registered-models/create", name=f"svc~{uuid.uuid4().hex[:8]}").status_code == 200
