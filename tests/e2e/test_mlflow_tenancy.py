"""MLflow per tenant, end to end on the real stack (API on uvicorn, Airflow running
`qlora_training` with the workers' own MLflow account, MLflow with its `basic-auth` app): a job
trains, logs its metrics and registers its model as before; its owner then signs in to MLflow's
REST API with the username and password of the service and reads the run, its metrics and its
adapter and its registered model version, and can delete none of it; another user gets 403 on all of it;
without credentials 401."""

from __future__ import annotations

import httpx
import pytest

from devstack.seed import seed_tiny_models
from tests.e2e.journey import PASSWORD, login, ready_dataset, start_job, watch
from training import job_spec

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(900)]
API2 = "/api/2.0/mlflow"


def test_a_users_runs_are_theirs_alone_in_mlflow(api_server, tmp_path):
    lines = seed_tiny_models(api_server.s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    base = api_server.base_url.rstrip("/") + "/v1"
    with httpx.Client(base_url=base, timeout=60) as api, httpx.Client(base_url=base, timeout=60) as other:
        owner, stranger = login(api), login(other)
        dataset_id = ready_dataset(api, tmp_path, clips=8)
        job_id = start_job(api, dataset_id, "flamingo-tiny-classification", "colours", epochs=1)
        job, _ = watch(api, job_id, lambda j: j["status"] in ("completed", "failed", "stopped"), 420)
    assert job["status"] == "completed", (job.get("error"), job.get("logs"))
    run_id = job["mlflow_run_id"]

    with httpx.Client(base_url=api_server.mlflow_uri, auth=(owner, PASSWORD), timeout=30) as mine, \
            httpx.Client(base_url=api_server.mlflow_uri, auth=(stranger, PASSWORD), timeout=30) as theirs, \
            httpx.Client(base_url=api_server.mlflow_uri, timeout=30) as anonymous:
        # the owner: the run with the metrics the workers logged, in their experiment, and the adapter
        run = mine.get(f"{API2}/runs/get", params={"run_id": run_id})
        assert run.status_code == 200, run.text
        info, metrics = run.json()["run"]["info"], {m["key"] for m in run.json()["run"]["data"]["metrics"]}
        assert {"loss", "progress"} <= metrics, metrics
        experiment = mine.get(f"{API2}/experiments/get", params={"experiment_id": info["experiment_id"]})
        assert experiment.json()["experiment"]["name"] == job_spec.mlflow_experiment_name(owner)
        listed = mine.get(f"{API2}/artifacts/list", params={"run_id": run_id})
        assert listed.status_code == 200 and "adapter" in {f["path"] for f in listed.json()["files"]}
        found = mine.post(f"{API2}/runs/search", json={"experiment_ids": [info["experiment_id"]]}).json()["runs"]
        assert [r["info"]["run_id"] for r in found] == [run_id]
        # ... and deletes nothing
        assert mine.post(f"{API2}/runs/delete", json={"run_id": run_id}).status_code == 403
        assert mine.post(f"{API2}/experiments/delete", json={"experiment_id": info["experiment_id"]}).status_code == 403

        # another user: nothing of it
        for resp in (theirs.get(f"{API2}/runs/get", params={"run_id": run_id}),
                     theirs.get(f"{API2}/experiments/get", params={"experiment_id": info["experiment_id"]}),
                     theirs.get(f"{API2}/artifacts/list", params={"run_id": run_id}),
                     theirs.get(f"{API2}/metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}),
                     theirs.post(f"{API2}/runs/delete", json={"run_id": run_id})):
            assert resp.status_code == 403, (resp.request.url, resp.status_code, resp.text[:200])
        assert anonymous.get(f"{API2}/runs/get", params={"run_id": run_id}).status_code == 401

        # the registered model (granted when the job started): the owner opens the version the
        # job detail links to; the other user cannot; nobody but the workers changes it
        name, version = job["registered_model"]["name"], job["registered_model"]["version"]
        got = mine.get(f"{API2}/model-versions/get", params={"name": name, "version": version})
        assert got.status_code == 200 and got.json()["model_version"]["run_id"] == run_id, got.text
        assert theirs.get(f"{API2}/registered-models/get", params={"name": name}).status_code == 403
        assert mine.request("DELETE", f"{API2}/registered-models/delete", json={"name": name}).status_code == 403

    # the model was registered by the workers (read here as the operators' admin)
    from mlflow.tracking import MlflowClient

    versions = MlflowClient(tracking_uri=api_server.mlflow_uri).search_model_versions(f"run_id = '{run_id}'")
    assert versions, f"no registered model version for run {run_id}"
