"""End to end through the real stack (API on uvicorn + PostgreSQL, SeaweedFS, Airflow running
`qlora_training`, MLflow): a user uploads a dataset, trains tiny catalog models to completion,
stops a long job, and a killed training ends failed with a reason. MLflow per tenant: the owner
of a completed job reads its run, metrics, adapter and registered version in MLflow with the
service's username and password and deletes none of it; another user gets 403; anonymous 401."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from devstack.processes import pids_with_args
from devstack.seed import seed_tiny_models
from tests.e2e.journey import PASSWORD, TERMINAL, login, ready_dataset, start_job, watch
from training import job_spec
from training.s3 import adapter_prefix, s3_uri

pytestmark = [pytest.mark.e2e, pytest.mark.stack, pytest.mark.timeout(900)]
API2 = "/api/2.0/mlflow"


def _mlflow_is_per_tenant(mlflow_uri: str, job: dict, owner: str, stranger: str) -> None:
    """MLflow's REST API (what its UI calls) as the job's owner, another user and nobody."""
    run_id = job["mlflow_run_id"]
    with httpx.Client(base_url=mlflow_uri, auth=(owner, PASSWORD), timeout=30) as mine, \
            httpx.Client(base_url=mlflow_uri, auth=(stranger, PASSWORD), timeout=30) as theirs, \
            httpx.Client(base_url=mlflow_uri, timeout=30) as anonymous:
        run = mine.get(f"{API2}/runs/get", params={"run_id": run_id})
        assert run.status_code == 200, run.text
        info, metrics = run.json()["run"]["info"], {m["key"] for m in run.json()["run"]["data"]["metrics"]}
        assert {"loss", "progress"} <= metrics, metrics
        experiment = mine.get(f"{API2}/experiments/get", params={"experiment_id": info["experiment_id"]})
        assert experiment.json()["experiment"]["name"] == job_spec.mlflow_experiment_name(owner)
        listed = mine.get(f"{API2}/artifacts/list", params={"run_id": run_id})
        assert listed.status_code == 200 and "adapter" in {f["path"] for f in listed.json()["files"]}
        name, version = job["registered_model"]["name"], job["registered_model"]["version"]
        got = mine.get(f"{API2}/model-versions/get", params={"name": name, "version": version})
        assert got.status_code == 200 and got.json()["model_version"]["run_id"] == run_id, got.text
        for resp in (mine.post(f"{API2}/runs/delete", json={"run_id": run_id}),
                     mine.post(f"{API2}/experiments/delete", json={"experiment_id": info["experiment_id"]}),
                     mine.request("DELETE", f"{API2}/registered-models/delete", json={"name": name}),
                     theirs.get(f"{API2}/runs/get", params={"run_id": run_id}),
                     theirs.get(f"{API2}/experiments/get", params={"experiment_id": info["experiment_id"]}),
                     theirs.get(f"{API2}/artifacts/list", params={"run_id": run_id}),
                     theirs.get(f"{API2}/metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}),
                     theirs.get(f"{API2}/registered-models/get", params={"name": name}),
                     theirs.post(f"{API2}/runs/delete", json={"run_id": run_id})):
            assert resp.status_code == 403, (resp.request.method, resp.request.url, resp.status_code, resp.text[:200])
        assert anonymous.get(f"{API2}/runs/get", params={"run_id": run_id}).status_code == 401
        assert mine.get(f"{API2}/runs/get", params={"run_id": run_id}).json()["run"]["info"]["lifecycle_stage"] == "active"


def _leads_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def test_train_watch_stop_and_kill(api_server, tmp_path):
    lines = seed_tiny_models(api_server.s3, tmp_path / "seed.log")
    assert not any("failed" in line for line in lines), lines
    base = api_server.base_url.rstrip("/") + "/v1"
    with httpx.Client(base_url=base, timeout=60) as api, httpx.Client(base_url=base, timeout=60) as other:
        owner, stranger = login(api), login(other)
        dataset_id = ready_dataset(api, tmp_path)

        # two tiny jobs to completion (the gpu pool has one slot: they run one after the other)
        jobs = {"captioning": start_job(api, dataset_id, "flamingo-tiny-captioning", "caps", epochs=1),
                "classification": start_job(api, dataset_id, "flamingo-tiny-classification", "dirs", epochs=2)}
        assert other.get(f"/trainings/{jobs['captioning']}").status_code == 404
        from mlflow.tracking import MlflowClient

        mlflow = MlflowClient(tracking_uri=api_server.mlflow_uri)
        s3 = api_server.s3.client()
        history: dict[str, list[dict]] = {kind: [] for kind in jobs}
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and not all(h and h[-1]["status"] in TERMINAL for h in history.values()):
            for kind, job_id in jobs.items():  # both watched at once: the second may run while the first ends
                if not history[kind] or history[kind][-1]["status"] not in TERMINAL:
                    got = api.get(f"/trainings/{job_id}")
                    assert got.status_code == 200, got.text
                    history[kind].append(got.json())
            time.sleep(0.3)
        for kind, job_id in jobs.items():
            seen = history[kind]
            final = seen[-1]
            statuses = list(dict.fromkeys(j["status"] for j in seen))
            assert final["status"] == "completed", (kind, final.get("error"), final.get("logs"))
            assert statuses[-1] == "completed" and set(statuses) <= {"queued", "running", "completed"}, statuses
            assert "running" in statuses, statuses
            progress = [j["progress"] for j in seen]
            assert progress == sorted(progress) and final["progress"] == 1.0, progress
            assert final["started_at"] and final["completed_at"]
            prefix = adapter_prefix(job_id)
            assert final["output_path"] == s3_uri(api_server.s3.bucket, prefix)
            keys = {o["Key"][len(prefix):] for o in
                    s3.list_objects_v2(Bucket=api_server.s3.bucket, Prefix=prefix).get("Contents", [])}
            assert {"adapter_config.json", "adapter_model.safetensors"} <= keys, keys
            run = mlflow.get_run(final["mlflow_run_id"])
            assert run.data.tags["job_id"] == job_id and run.info.run_name == ("caps" if kind == "captioning" else "dirs")
            assert "loss" in run.data.metrics and final["metrics"]["progress"] == 1.0
            assert any(a.path == "adapter" for a in mlflow.list_artifacts(run.info.run_id))
            assert final["mlflow_run_url"].endswith(f"/runs/{run.info.run_id}")
            assert final["logs"], final
            # each detail was read fresh, or names the fields it shows as stored and why (Airflow slow)
            assert all(j["stale_reason"] for j in seen if j["stale"]), [j for j in seen if j["stale"]]
            assert any(j["status"] == "running" and j["stage"] and not j["stale"] for j in seen), seen
        # the worker's cache keeps the model, not the jobs' outputs (their adapters are in S3)
        cache = Path(api_server.airflow.env["QLORA_CACHE_DIR"])
        assert (cache / "models").is_dir() and not any((cache / "trainings" / j).exists() for j in jobs.values())
        listed = {j["job_id"]: j for j in api.get("/trainings").json()}
        assert {listed[j]["status"] for j in jobs.values()} == {"completed"}
        _mlflow_is_per_tenant(api_server.mlflow_uri, history["classification"][-1], owner, stranger)
        assert other.get("/trainings").json() == []

        # stop a long job while it trains
        long_job = start_job(api, dataset_id, "flamingo-tiny-classification", "long", epochs=100, batch_size=1)
        watch(api, long_job, lambda j: j["status"] == "running" and j["progress"] > 0, 240)
        asked = time.monotonic()
        assert api.post(f"/trainings/{long_job}/stop").status_code == 202
        final, seen = watch(api, long_job, lambda j: j["status"] in TERMINAL, 60)
        stopped_s = time.monotonic() - asked
        print(f"stop request -> job stopped: {stopped_s:.1f} s")
        assert final["status"] == "stopped", final
        assert stopped_s < 30
        # stopped means the training process is gone and its partial adapter is complete in S3
        assert not pids_with_args("training", "run", long_job)
        assert {(j["status"], j["stage"]) for j in seen[:-1]} <= {("running", "training"), ("running", "stopping")}
        prefix = adapter_prefix(long_job)
        assert final["output_path"] == s3_uri(api_server.s3.bucket, prefix)
        keys = {o["Key"][len(prefix):] for o in
                s3.list_objects_v2(Bucket=api_server.s3.bucket, Prefix=prefix).get("Contents", [])}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= keys, keys
        assert final["error"] is None and final["progress"] < 1.0, final
        assert not (cache / "trainings" / long_job).exists()
        again = api.post(f"/trainings/{long_job}/stop")
        assert again.status_code == 400, again.text
        assert {j["job_id"]: j["status"] for j in api.get("/trainings").json()}[long_job] == "stopped"

        # SIGKILL of the training process: Airflow retries the train task (which resumes from the
        # last uploaded checkpoint, none here) while the job stays running; killed on every try,
        # the job ends failed with the reason
        doomed = start_job(api, dataset_id, "flamingo-tiny-classification", "doomed", epochs=100, batch_size=1)
        watch(api, doomed, lambda j: j["status"] == "running" and j["progress"] > 0, 240)
        killed: set[int] = set()
        for attempt in range(3):  # the first try and its two retries (TRAIN_RETRIES)
            deadline = time.monotonic() + 180
            # the engine itself: it leads its own session (cold or forked warm); not its data-loading
            # workers, one of which may outlive a killed engine by seconds and pass for the next try's
            while not (pids := {p for p in pids_with_args("training", "run", doomed) if _leads_session(p)}
                       - killed):
                assert time.monotonic() < deadline, f"try {attempt + 1}: no training process"
                time.sleep(0.5)
            if attempt:
                assert api.get(f"/trainings/{doomed}").json()["status"] == "running"  # retried, not failed
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed |= pids
        final, _ = watch(api, doomed, lambda j: j["status"] in TERMINAL, 120)
        assert final["status"] == "failed", final
        assert "SIGKILL" in (final["error"] or ""), final
